"""`python -m bastion_audit`: serve (default), or work on the store directly.

- `events [--type T] [--limit N]`: stored events as JSON lines;
- `verify`: walk the hash chain and the signed checkpoints, and compare the chain with
  the newest anchor outside the database (`anchor.py`); prints the result as JSON and
  exits 1 when a record is bad or missing (naming the first one);
- `checkpoint`: sign the current head now and anchor it outside the database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import timedelta

from bastion_audit import anchor
from bastion_audit.app import anchor_book, create_app, max_anchor_age, open_store
from bastion_audit.settings import Settings
from bastion_audit.signing import CheckpointSigner
from bastion_audit.store import AuditStore, Checkpoint
from bastion_common.redis import create_redis
from bastion_common.service import run
from bastion_common.settings import load_settings


async def _read_anchors(
    settings: Settings, signer: CheckpointSigner, store: AuditStore
) -> tuple[list[Checkpoint], list[str], Checkpoint | None]:
    redis = create_redis(settings.redis_url.get_secret_value())
    try:
        return await anchor.read_consistent(anchor_book(settings, redis, signer), store)
    finally:
        await redis.aclose()


async def _anchor(settings: Settings, signer: CheckpointSigner, newest: Checkpoint) -> bool:
    redis = create_redis(settings.redis_url.get_secret_value())
    try:
        return await anchor_book(settings, redis, signer).write(newest)
    finally:
        await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bastion_audit")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the collector and API (default)")
    events = sub.add_parser("events", help="print stored events as JSON lines")
    events.add_argument("--type", dest="type_", default=None)
    events.add_argument("--limit", type=int, default=1000)
    sub.add_parser("verify", help="verify the hash chain and checkpoints")
    sub.add_parser("checkpoint", help="sign the current chain head")
    args = parser.parse_args(argv)
    settings = load_settings(Settings)
    if args.command in ("events", "verify", "checkpoint"):
        store, signer = open_store(settings)
        try:
            if args.command == "events":
                for row in store.query(type_=args.type_, limit=args.limit):
                    sys.stdout.write(json.dumps(row) + "\n")
                return 0
            if args.command == "checkpoint":
                seq = store.checkpoint(refresh=True)
                newest = store.newest_checkpoint()
                anchored = newest is not None and asyncio.run(_anchor(settings, signer, newest))
                sys.stdout.write(json.dumps({"checkpoint": seq, "anchored": anchored}) + "\n")
                return 0 if anchored or newest is None else 1
            retention = timedelta(days=settings.retention_days) if settings.retention_days else None
            # Another process may be between a checkpoint and its anchor; the service's
            # own /v1/verify reads both under its lock.
            found, unreadable, newest = asyncio.run(_read_anchors(settings, signer, store))
            result = store.verify(signer, retention=retention)  # after: the chain only grows
            result = anchor.check(
                result, store, signer, found, unreadable, newest, max_age=max_anchor_age(settings)
            )
            sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
            return 0 if result.ok else 1
        finally:
            store.close()
    run(create_app(settings), settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
