"""`python -m bastion_tools`: validate settings and the policy file, then serve;
`python -m bastion_tools gateway ...`: the gateway's admin commands (`gateway.cli`)."""

from __future__ import annotations

import sys

from bastion_common.policyfile import Policy, PolicyError, load_policy
from bastion_common.service import run
from bastion_common.settings import load_settings, policy_file_problems
from bastion_tools.app import create_app
from bastion_tools.settings import Settings


def load_policy_or_exit(settings: Settings) -> Policy:
    """The policy file, or exit with one line per problem (never a secret's value)."""
    if settings.policy_file is None:
        return Policy()
    try:
        return load_policy(settings.policy_file)
    except PolicyError as exc:
        sys.stderr.write(policy_file_problems(exc) + "\n")
        raise SystemExit(2) from None


def main() -> None:
    settings = load_settings(Settings)
    policy = load_policy_or_exit(settings)
    if len(sys.argv) > 1 and sys.argv[1] == "gateway":
        from bastion_tools.gateway.cli import main as gateway_main

        raise SystemExit(gateway_main(settings, policy, sys.argv[2:]))
    run(create_app(settings, policy), settings)


if __name__ == "__main__":
    main()
