"""One way to read the caller's address: a client cannot choose it by sending
X-Forwarded-For, and behind a trusted proxy each client is told apart."""

from __future__ import annotations

import pytest

from bastion_common.clientip import client_ip, parse_networks

PROXIES = ["10.0.0.0/24", "2001:db8::1"]


def test_without_a_trusted_proxy_the_header_is_ignored() -> None:
    assert client_ip("198.51.100.7", "203.0.113.1", []) == "198.51.100.7"
    assert client_ip(None, "203.0.113.1", []) == "unknown"


def test_an_untrusted_peer_cannot_name_an_address() -> None:
    assert client_ip("198.51.100.7", "203.0.113.1", PROXIES) == "198.51.100.7"


def test_behind_trusted_proxies_the_first_untrusted_hop_from_the_right_is_the_client() -> None:
    # The client sent "1.2.3.4" itself; the proxies appended what they saw.
    assert client_ip("10.0.0.5", "1.2.3.4, 203.0.113.9, 10.0.0.8", PROXIES) == "203.0.113.9"
    assert client_ip("2001:db8::1", "203.0.113.9", PROXIES) == "203.0.113.9"
    assert client_ip("10.0.0.5", "", PROXIES) == "10.0.0.5"
    assert client_ip("10.0.0.5", "not-an-address", PROXIES) == "not-an-address"[:64]


def test_a_proxy_list_that_is_not_addresses_is_refused() -> None:
    with pytest.raises(ValueError, match="'proxy.example' is not an IP address or network"):
        parse_networks(["10.0.0.1", "proxy.example"])
