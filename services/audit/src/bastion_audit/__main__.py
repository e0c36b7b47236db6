"""`python -m bastion_audit`: serve (default), or work on the store directly.

- `events [--type T] [--limit N]`: stored events as JSON lines;
- `verify`: walk the hash chain and the signed checkpoints; prints the result as JSON
  and exits 1 when a record is bad (naming the first one);
- `checkpoint`: sign the current head now.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta

from bastion_audit.app import create_app, open_store
from bastion_audit.settings import Settings
from bastion_common.service import run
from bastion_common.settings import load_settings


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
                sys.stdout.write(json.dumps({"checkpoint": store.checkpoint()}) + "\n")
                return 0
            retention = timedelta(days=settings.retention_days) if settings.retention_days else None
            result = store.verify(signer, retention=retention)
            sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
            return 0 if result.ok else 1
        finally:
            store.close()
    run(create_app(settings), settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
