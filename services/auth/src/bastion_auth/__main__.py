"""`python -m bastion_auth`: serve (no arguments), or admin actions inside the container:

python -m bastion_auth users list
python -m bastion_auth users create NAME --role admin [--role user]   (password on stdin)
python -m bastion_auth users update NAME [--role R ...] [--disable | --enable]
python -m bastion_auth users revoke NAME          (sign out everywhere)
python -m bastion_auth keys rotate
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from pathlib import Path

import structlog

from bastion_auth.app import build_context, create_app
from bastion_auth.settings import Settings
from bastion_auth.users import UserError
from bastion_common.auditor import Auditor
from bastion_common.publisher import AuditPublisher
from bastion_common.redis import create_redis
from bastion_common.service import ServiceState, run
from bastion_common.settings import load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bastion_auth")
    sub = parser.add_subparsers(dest="group")
    users = sub.add_parser("users").add_subparsers(dest="action", required=True)
    users.add_parser("list")
    create = users.add_parser("create")
    create.add_argument("username")
    create.add_argument("--role", action="append", required=True)
    update = users.add_parser("update")
    update.add_argument("username")
    update.add_argument("--role", action="append")
    flag = update.add_mutually_exclusive_group()
    flag.add_argument("--disable", action="store_true")
    flag.add_argument("--enable", action="store_true")
    users.add_parser("revoke").add_argument("username")
    keys = sub.add_parser("keys").add_subparsers(dest="action", required=True)
    keys.add_parser("rotate")
    return parser


async def _command(settings: Settings, args: argparse.Namespace) -> int:
    redis = create_redis(settings.redis_url.get_secret_value())
    publisher = AuditPublisher(redis, Path(settings.spool_dir) / "auth-cli.jsonl")
    await publisher.start()
    try:
        audit = Auditor(publisher, settings.service_name)
        ctx = await build_context(settings, ServiceState(settings, redis, audit))
        out: object
        if args.group == "keys":
            kid, previous = await ctx.keyring.rotate()
            ctx.event("signing_key.rotated", principal="cli", kid=kid, previous_kid=previous)
            out = {"kid": kid, "previous_kid": previous}
        elif args.action == "list":
            out = {"users": [u.public() for u in await ctx.users.all()]}
        elif args.action == "create":
            password = (
                sys.stdin.readline().rstrip("\n") if not sys.stdin.isatty() else getpass.getpass()
            )
            user = await ctx.users.create(args.username, password, args.role)
            ctx.event("user.created", principal="cli", username=user.username, roles=user.roles)
            out = user.public()
        elif args.action == "update":
            disabled = True if args.disable else False if args.enable else None
            updated = await ctx.users.update(args.username, roles=args.role, disabled=disabled)
            if updated is None:
                sys.stderr.write("no such user\n")
                return 1
            if disabled:
                await ctx.tokens.revoke_user(updated.username)
            ctx.event(
                "user.updated",
                principal="cli",
                username=updated.username,
                roles=updated.roles,
                disabled=updated.disabled,
            )
            out = updated.public()
        else:
            grants = await ctx.tokens.revoke_user(args.username.lower())
            ctx.event("token.revoked", principal="cli", username=args.username.lower(), scope="all")
            out = {"username": args.username.lower(), "grants_revoked": grants}
        print(json.dumps(out))  # noqa: T201 - CLI output: one JSON line
        return 0
    except (UserError, RuntimeError) as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    finally:
        await publisher.close()
        await redis.aclose()


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    settings = load_settings(Settings)
    if args.group is None:
        run(create_app(settings), settings)
        return
    # Logs go to stderr so that stdout is the command's JSON answer only.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    raise SystemExit(asyncio.run(_command(settings, args)))


if __name__ == "__main__":
    main()
