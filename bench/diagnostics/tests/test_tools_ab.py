"""The A/B benchmark's source trees: a ref is exported whole, `.` is the checkout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# The diagnostics import each other and the harness one folder up, as when run.
sys.path[:0] = [str(Path(__file__).resolve().parents[n]) for n in (1, 2)]

import tools_ab  # noqa: E402 - needs the path above


def test_a_ref_is_exported_with_both_packages(tmp_path: Path) -> None:
    tree = tools_ab.source_tree("HEAD", tmp_path / "a")
    assert tree == tmp_path / "a"
    for package in ("libs/common/src/bastion_common", "services/tools/src/bastion_tools"):
        assert (tree / package / "__init__.py").is_file()
    assert tools_ab.python_path(tree).split(":") == [
        str(tree / "libs/common/src"), str(tree / "services/tools/src")
    ]  # fmt: skip
    # Only what the two servers import: no other service comes along.
    assert sorted(p.name for p in (tree / "services").iterdir()) == ["tools"]


def test_the_working_tree_is_used_as_it_is(tmp_path: Path) -> None:
    assert tools_ab.source_tree(".", tmp_path / "b") == tools_ab.ROOT
    assert not (tmp_path / "b").exists()


def test_an_unknown_ref_is_refused(tmp_path: Path) -> None:
    with pytest.raises(subprocess.CalledProcessError):
        tools_ab.source_tree("no-such-ref-anywhere", tmp_path / "c")
