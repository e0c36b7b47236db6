"""`python -m bastion_tools`: validate settings, then serve."""

from __future__ import annotations

from bastion_common.service import run
from bastion_common.settings import load_settings
from bastion_tools.app import create_app
from bastion_tools.settings import Settings


def main() -> None:
    settings = load_settings(Settings)
    run(create_app(settings), settings)


if __name__ == "__main__":
    main()
