from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from services.auth.tests.helpers import REDIRECT, Harness, harness, make_settings, pkce_pair

from bastion_auth.cimd import is_public_address
from tests.integration.tls import DocumentServer, TestCA

SSRF_TARGETS = [
    "http://example.com/client.json",  # not https
    "https://127.0.0.1/client.json",
    "https://localhost/client.json",
    "https://10.1.2.3/client.json",
    "https://192.168.0.10/client.json",
    "https://169.254.169.254/latest/meta-data",
    "https://[::1]/client.json",
    "https://0.0.0.0/client.json",
    "https://user:pw@example.com/client.json",
    "https://example.com/",
]
# IPv6 forms that reach 169.254.169.254 (or an inside network) through a translator, a
# tunnel or an old addressing rule, while the IPv6 address itself may look global.
IPV6_SSRF_TARGETS = [
    "https://[64:ff9b::a9fe:a9fe]/client.json",  # NAT64
    "https://[2002:a9fe:a9fe::1]/client.json",  # 6to4
    "https://[::a9fe:a9fe]/client.json",  # IPv4-compatible
    "https://[fec0::1]/client.json",  # site-local
    "https://[2001:0:a9fe:a9fe::1]/client.json",  # Teredo
    "https://[::ffff:a9fe:a9fe]/client.json",  # IPv4-mapped
]

EMBEDDING_ADDRESSES = [
    "64:ff9b::a9fe:a9fe",
    "64:ff9b::808:808",  # NAT64 of a public IPv4 still goes through someone's translator
    "64:ff9b:1::a9fe:a9fe",
    "2002:a9fe:a9fe::1",
    "2002:808:808::1",
    "::a9fe:a9fe",
    "::ffff:10.0.0.1",
    "::ffff:8.8.8.8",
    "fec0::1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "2001::a9fe:a9fe",
]


@pytest.mark.parametrize("address", EMBEDDING_ADDRESSES)
def test_ipv6_addresses_that_embed_or_translate_to_ipv4_are_not_public(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["2606:4700:4700::1111", "8.8.8.8", "2a00:1450::1"])
def test_plain_global_addresses_stay_public(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.anyio
@pytest.mark.parametrize("url", SSRF_TARGETS)
async def test_metadata_document_urls_that_reach_inside_are_refused(h: Harness, url: str) -> None:
    page = await h.authorize(url)
    assert page.status_code == 400 and "location" not in page.headers
    events = await h.events("oauth.request_failed")
    assert events[0]["details"]["error"] == "invalid_client"
    token = await h.client.post(
        "/token", data={"grant_type": "refresh_token", "client_id": url, "refresh_token": "x"}
    )
    assert token.status_code == 401 and token.json()["error"] == "invalid_client"


@pytest.mark.anyio
@pytest.mark.parametrize("url", IPV6_SSRF_TARGETS)
async def test_ipv6_forms_of_inside_addresses_are_refused_before_any_fetch(
    h: Harness, url: str
) -> None:
    page = await h.authorize(url)
    assert page.status_code == 400 and "location" not in page.headers
    [event] = await h.events("oauth.request_failed")
    # Refused by the address check, not by a fetch that happened to fail.
    assert event["details"]["error"] == "invalid_client"
    assert event["details"]["reason"] == "client_id host is not a public address"


class _Docs:
    def __init__(self) -> None:
        self.bodies: dict[str, bytes] = {}
        self.hits = 0
        docs = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                docs.hits += 1
                body = docs.bodies.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def docs() -> Iterator[_Docs]:
    value = _Docs()
    yield value
    value.server.shutdown()
    value.server.server_close()


@pytest.mark.anyio
async def test_a_metadata_document_client_completes_the_flow_and_is_cached(
    redis_url: str, tmp_path: Path, docs: _Docs
) -> None:
    url = f"{docs.base}/client.json"
    docs.bodies["/client.json"] = json.dumps(
        {"client_id": url, "client_name": "Doc client", "redirect_uris": [REDIRECT]}
    ).encode()
    settings = make_settings(
        redis_url, tmp_path, cimd_allowed_hosts=["127.0.0.1"], cimd_allow_http=True
    )
    async with harness(settings) as h:
        verifier, challenge = pkce_pair()
        code = await h.code(url, (verifier, challenge))
        response = await h.exchange(url, code, verifier)
        assert response.status_code == 200
        assert docs.hits == 1
        events = await h.events("client.registered")
        assert events[0]["details"]["source"] == "cimd"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        b"x" * 10000,
        b"not json",
        json.dumps(
            {"client_id": "https://other.example/c.json", "redirect_uris": [REDIRECT]}
        ).encode(),
    ],
)
async def test_oversized_or_mismatched_documents_are_refused(
    redis_url: str, tmp_path: Path, docs: _Docs, body: bytes
) -> None:
    url = f"{docs.base}/client.json"
    docs.bodies["/client.json"] = body
    settings = make_settings(
        redis_url, tmp_path, cimd_allowed_hosts=["127.0.0.1"], cimd_allow_http=True
    )
    async with harness(settings) as h:
        page = await h.authorize(url)
        assert page.status_code == 400


@pytest.mark.anyio
async def test_the_fetch_connects_to_the_checked_address_not_a_fresh_lookup(
    h: Harness, docs: _Docs
) -> None:
    from bastion_auth.cimd import _fetch, _pinned

    docs.bodies["/client.json"] = b'{"ok": true}'
    port = docs.server.server_port
    # "rebind.invalid" never resolves: the body can only come from the pinned address.
    url = f"http://rebind.invalid:{port}/client.json"
    assert await _fetch(h.ctx, url, "127.0.0.1") == b'{"ok": true}'
    target, headers, extensions = _pinned("https://docs.example/c.json", "2001:db8::1")
    assert target == "https://[2001:db8::1]/c.json"
    assert headers["Host"] == "docs.example" and extensions == {"sni_hostname": "docs.example"}


@pytest.fixture
def https_docs(tmp_path: Path) -> Iterator[tuple[TestCA, DocumentServer]]:
    ca = TestCA(tmp_path / "tls", ["localhost", "127.0.0.1"])
    server = DocumentServer(ca)
    yield ca, server
    server.close()


@pytest.mark.anyio
@pytest.mark.parametrize("trusted", [True, False])
async def test_a_document_served_over_https_is_believed_only_with_the_configured_ca(
    redis_url: str, tmp_path: Path, https_docs: tuple[TestCA, DocumentServer], trusted: bool
) -> None:
    ca, server = https_docs
    url = f"https://localhost:{server.port}/client.json"
    server.bodies["/client.json"] = json.dumps(
        {"client_id": url, "client_name": "TLS doc client", "redirect_uris": [REDIRECT]}
    ).encode()
    settings = make_settings(
        redis_url,
        tmp_path,
        cimd_allowed_hosts=["localhost"],
        cimd_ca_file=str(ca.ca_file) if trusted else None,
    )
    async with harness(settings) as h:
        if trusted:
            verifier, challenge = pkce_pair()
            code = await h.code(url, (verifier, challenge))
            assert (await h.exchange(url, code, verifier)).status_code == 200
            events = await h.events("client.registered")
            assert events[0]["client_id"] == url and events[0]["details"]["source"] == "cimd"
            assert server.hits["/client.json"] == 1
        else:
            # The test CA is not a system root: the certificate is refused, the client too.
            page = await h.authorize(url)
            assert page.status_code == 400 and "location" not in page.headers
            events = await h.events("oauth.request_failed")
            assert events[0]["details"]["error"] == "invalid_client"
            assert "unreachable" in page.text  # the TLS handshake failed: no GET was served
            assert server.hits == {}


@pytest.mark.anyio
async def test_a_configured_ca_does_not_open_internal_hosts(
    redis_url: str, tmp_path: Path, https_docs: tuple[TestCA, DocumentServer]
) -> None:
    """The CA widens which certificates are believed, never which hosts are fetched:
    127.0.0.1 is not in cimd_allowed_hosts, so it is refused before any connection."""
    ca, server = https_docs
    url = f"https://127.0.0.1:{server.port}/client.json"
    server.bodies["/client.json"] = json.dumps(
        {"client_id": url, "redirect_uris": [REDIRECT]}
    ).encode()
    settings = make_settings(
        redis_url, tmp_path, cimd_allowed_hosts=["localhost"], cimd_ca_file=str(ca.ca_file)
    )
    async with harness(settings) as h:
        page = await h.authorize(url)
        assert page.status_code == 400 and "location" not in page.headers
    assert server.hits == {}


def test_an_unreadable_ca_file_stops_the_service(redis_url: str, tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("not a certificate")
    for path in (tmp_path / "missing.pem", tmp_path / "bad.pem"):
        with pytest.raises(ValueError, match="AUTH_CIMD_CA_FILE"):
            make_settings(redis_url, tmp_path, cimd_ca_file=str(path))
