"""`python -m bastion_auth`: validate settings, then serve."""

from __future__ import annotations

from bastion_auth.app import create_app
from bastion_auth.settings import Settings
from bastion_common.service import run
from bastion_common.settings import load_settings


def main() -> None:
    settings = load_settings(Settings)
    run(create_app(settings), settings)


if __name__ == "__main__":
    main()
