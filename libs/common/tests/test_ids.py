"""Random identifiers: the shape of uuid4().hex, never repeated, not shared across fork."""

from __future__ import annotations

import os
import re

from bastion_common.ids import random_hex

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def test_ids_are_32_hex_digits_and_never_repeat() -> None:
    ids = [random_hex() for _ in range(20_000)]  # many refills of the pool
    assert all(HEX32.match(value) for value in ids)
    assert len(set(ids)) == len(ids)


def test_ids_use_all_the_bits() -> None:
    ids = [int(random_hex(), 16) for _ in range(2_000)]
    for bit in (0, 63, 64, 127):  # each bit is set in about half of them
        share = sum(value >> bit & 1 for value in ids) / len(ids)
        assert 0.4 < share < 0.6


def test_a_forked_child_does_not_hand_out_the_parents_next_ids() -> None:
    random_hex()  # the pool is full: a child without the fork hook would pop the same ones
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.write(write, "".join(random_hex() for _ in range(8)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    child = {text[i : i + 32] for i in range(0, len(text), 32)}
    parent = {random_hex() for _ in range(8)}
    assert len(child) == 8
    assert not child & parent
