"""Settings that must stop the service: HS256 mode is refused (issue 22)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from services.auth.tests.helpers import make_settings

from bastion_auth.settings import HS256_REFUSED

HS_SECRET = "hs-" + "Lq9Zx2Wm7Rt4Yb1Nc6Vd3Fg8Js5Ae0Hk"


@pytest.mark.parametrize(
    "overrides",
    [
        {"signing_alg": "HS256", "hs256_secret": HS_SECRET},
        {"signing_alg": "HS256"},
        {"hs256_secret": HS_SECRET},
    ],
)
def test_hs256_mode_is_refused_by_settings(
    redis_url: str, tmp_path: Path, overrides: dict[str, str]
) -> None:
    with pytest.raises(ValidationError) as caught:
        make_settings(redis_url, tmp_path, **overrides)
    assert HS256_REFUSED in str(caught.value)


def test_auth_does_not_start_in_hs256_mode(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "AUTH_KEY_ENCRYPTION_KEY": "kek-" + "Hq7Lp2Wx9Zm4Rt6Yb1Nc8Vd3Fg5Js0Ae",
        "AUTH_SESSION_SECRET": "ses-" + "Pw4Zr8Lq1Xm6Tn3Vb9Hc2Kd7Fg5Js0Ae",
        "AUTH_SPOOL_DIR": str(tmp_path / "spool"),
        "AUTH_SIGNING_ALG": "HS256",
        "AUTH_HS256_SECRET": HS_SECRET,
    }
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "bastion_auth"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert f"AUTH_SIGNING_ALG: Value error, {HS256_REFUSED}" in done.stderr
    # A clear message, not a stack trace, and never the secret itself.
    assert "Traceback" not in done.stderr and HS_SECRET not in done.stderr
    assert done.stdout == ""
