"""The summary table: what run.py renders from a run, how readme_table.py copies it into
README.md, and that the README's table has that shape. No timings are checked here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bench import readme_table, run

ROOT = Path(__file__).resolve().parents[2]


def overhead(p50: float, p99: float, ratio: float) -> dict[str, Any]:
    side = {"calls_per_s": 1000.0, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0}
    return {
        "plain": side, "secured": {**side, "calls_per_s": 1000.0 * ratio},
        "pipeline_p50_ms": p50, "pipeline_p99_ms": p99, "pipeline_cpu_ms_per_call": 0.1,
        "throughput_ratio_paired": ratio, "throughput_ratio_range": [ratio - 0.1, ratio + 0.1],
        "throughput_ratio_together": None,
    }  # fmt: skip


def summary(latency_p50: float = 0.3, cpu_ratio: float = 0.95) -> dict[str, Any]:
    server = {"calls_per_s": 900.0, "p50_ms": 9.0, "p99_ms": 20.0,
              "server_cpu_ms_per_call": 0.9, "server_busy": 0.99, "errors": 0}  # fmt: skip
    names = ("bastion", "sdk", "sdk-every-call", "fastmcp")
    tools = {f"{mode} c1": overhead(latency_p50, 0.8, 0.9) for mode in run.MODES}
    tools |= {f"{mode} c16": overhead(1.0, 2.0, 0.8) for mode in run.MODES}
    tools["stateless c16, 1 ms CPU tool"] = overhead(0.5, 1.0, cpu_ratio)
    return {
        "when": "2026-12-03T12:00:00+00:00", "command": "make bench",
        "machine": {"cpus": 2, "python": "3.11.2", "platform": "Linux", "load_before": "1.00"},
        "tools": tools,
        "peers": {
            "connections": 16, "mode": "stateless", "rounds": 2, "duration_s": 3,
            "versions": {name: {"mcp": "2.3.0"} for name in names},
            "enforces": {name: f"what {name} checks" for name in names},
            "refusals": {name: {"no token": 401} for name in names},
            "servers": dict.fromkeys(names, server),
            "vs_sdk": {"median": 1.05, "min": 1.0, "max": 1.1},
            "vs_sdk_every_call": {"median": 1.4, "min": 1.3, "max": 1.5},
            "vs_fastmcp": {"median": 2.5, "min": 2.1, "max": 2.9},
        },
        "instructions": {"mode": "modern", "calls": 160, "plain_instructions_per_call": 1_490_000,
                         "secured_instructions_per_call": 1_764_000,
                         "pipeline_instructions_per_call": 274_000},
    }  # fmt: skip


def test_a_run_renders_five_rows_with_its_figures() -> None:
    cells = readme_table.rows(readme_table.block(run.markdown(summary())))
    assert [row[0] for row in cells][:3] == [
        "added latency per call, 1 connection, p50 / p99",
        "throughput vs the mcp SDK's bearer auth, 16 connections",
        "throughput vs FastMCP, JWTVerifier + rate limiting, 16 connections",
    ]
    assert "stateless +0.30 / +0.80 ms" in cells[0][2]
    assert cells[1][2].startswith("1.05x")
    assert "274,000 instructions" in cells[4][2]
    assert [row[3] for row in cells] == ["yes", "yes", "yes", "yes", "yes"]


def test_a_missed_target_says_no() -> None:
    cells = readme_table.rows(
        readme_table.block(run.markdown(summary(latency_p50=0.45, cpu_ratio=0.85)))
    )
    assert cells[0][3] == "**no**"
    assert cells[3][3] == "**no**"
    assert cells[3][2].startswith("0.85x")


def test_without_valgrind_the_row_says_so() -> None:
    data = summary()
    del data["instructions"]
    cells = readme_table.rows(readme_table.block(run.markdown(data)))
    assert "not counted" in cells[4][2]


def test_the_readme_block_is_replaced_and_nothing_else() -> None:
    table = readme_table.block(run.markdown(summary()))
    readme = f"intro\n{readme_table.START}\nold\n{readme_table.END}\nrest\n"
    once = readme_table.replace(readme, table)
    assert once == f"intro\n{readme_table.START}\n{table}\n{readme_table.END}\nrest\n"
    assert readme_table.replace(once, table) == once


@pytest.mark.parametrize(
    "table",
    [
        "| a | b |\n|---|---|",
        readme_table.HEADER + "\n|---|---|---|---|\n| x | y | no figure | yes |" * 5,
    ],
)
def test_a_table_of_another_shape_is_refused(table: str) -> None:
    with pytest.raises(ValueError):
        readme_table.replace(f"{readme_table.START}\n{readme_table.END}", table)


def test_the_readme_holds_a_summary_table() -> None:
    readme = (ROOT / "README.md").read_text()
    cells = readme_table.rows(readme_table.block(readme))
    assert len(cells) == readme_table.ROWS


@pytest.mark.parametrize("script", ["run.py", "peers.py", "readme_table.py", "tools_overhead.py"])
def test_the_scripts_start(script: str) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--help"],
                         capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
    assert out.stdout.startswith("usage:")
