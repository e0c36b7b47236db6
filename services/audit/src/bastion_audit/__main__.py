"""`python -m bastion_audit`: serve, or `events` to print stored events as JSON lines."""

from __future__ import annotations

import argparse
import json
import sys

from bastion_audit.app import create_app
from bastion_audit.settings import Settings
from bastion_audit.store import AuditStore
from bastion_common.service import run
from bastion_common.settings import load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bastion_audit")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the collector and API (default)")
    events = sub.add_parser("events", help="print stored events as JSON lines")
    events.add_argument("--type", dest="type_", default=None)
    events.add_argument("--limit", type=int, default=1000)
    args = parser.parse_args(argv)
    settings = load_settings(Settings)
    if args.command == "events":
        store = AuditStore(settings.db_path)
        try:
            for row in store.query(type_=args.type_, limit=args.limit):
                sys.stdout.write(json.dumps(row) + "\n")
        finally:
            store.close()
        return 0
    run(create_app(settings), settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
