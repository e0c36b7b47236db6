"""Random identifiers for requests and audit events, without a system call each.

`random_hex()` is 32 hex digits from the operating system's CSPRNG, the shape of
`uuid4().hex`, as `os.urandom(16).hex()` would give. A tool call makes two (its request
id and its audit event's id), and one `getrandom` call each cost a few microseconds on
a busy server (a system call, then cold code). Here one call fills a pool of 128
identifiers and each id is a `list.pop`. The values are as unpredictable as before, and
as unlikely to repeat (the audit store drops an event whose id it has seen). A forked
child empties its pool at once, so parent and child never hand out the same one.
"""

from __future__ import annotations

import os

__all__ = ["random_hex"]

_POOL_SIZE = 128
_pool: list[str] = []


def _refill() -> None:
    block = os.urandom(16 * _POOL_SIZE).hex()
    _pool.extend([block[i : i + 32] for i in range(0, len(block), 32)])


def random_hex() -> str:
    """32 random hex digits (128 bits from os.urandom)."""
    try:
        return _pool.pop()  # atomic under the GIL: two threads never get the same one
    except IndexError:
        _refill()
        return _pool.pop()


os.register_at_fork(after_in_child=_pool.clear)
