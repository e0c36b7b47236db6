"""`python -m bastion_tools gateway held|approve ...` inside the tools container: the
admin API's review and approval, straight on Redis (the service picks an approval up on
its next listing of the upstream, at most `refresh_seconds` later).

  gateway held                          every held definition, with its diff
  gateway approve UPSTREAM TOOL DIGEST  pin that exact definition (recorded as the CLI)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from bastion_common.auditor import Auditor
from bastion_common.policyfile import Policy
from bastion_common.publisher import AuditPublisher
from bastion_common.redis import create_redis
from bastion_tools.gateway.admin import describe
from bastion_tools.gateway.pins import PinStore
from bastion_tools.gateway.record import GatewayRecord
from bastion_tools.settings import Settings

__all__ = ["main"]


def main(settings: Settings, policy: Policy, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bastion_tools gateway")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("held", help="held definitions and their diff")
    approve = commands.add_parser("approve", help="approve one held definition")
    approve.add_argument("upstream")
    approve.add_argument("tool")
    approve.add_argument("digest")
    args = parser.parse_args(argv)
    return asyncio.run(_run(settings, policy, args))


async def _run(settings: Settings, policy: Policy, args: argparse.Namespace) -> int:
    redis = create_redis(settings.redis_url.get_secret_value())
    spool = Path(settings.spool_dir) / f"{settings.service_name}-cli.jsonl"
    publisher = AuditPublisher(redis, spool)
    await publisher.start()
    try:
        pins = PinStore(redis)
        if args.command == "held":
            held = [describe(h) for name in policy.mcp_servers for h in await pins.held(name)]
            json.dump({"held": held}, sys.stdout, indent=2)
            sys.stdout.write("\n")
            return 0
        if args.upstream not in policy.mcp_servers:
            sys.stderr.write(f"no upstream {args.upstream} in the policy file\n")
            return 1
        approved = await pins.approve(args.upstream, args.tool, args.digest)
        if approved is None:
            sys.stderr.write("no held definition of this tool has that digest\n")
            return 1
        auditor = Auditor(publisher, settings.service_name, linger=0)
        GatewayRecord(auditor).approved(args.upstream, args.tool, approved.digest, "cli")
        sys.stdout.write(f"approved {args.upstream} {args.tool} {approved.digest}\n")
        return 0
    finally:
        await publisher.close()
        await redis.aclose()
