"""`make bench`: every benchmark in one run, collected into bench/results/latest.*.

Runs, one after the other (each script starts its own servers and a private
redis-server, load from wrk pinned to the other core):

- tools pipeline vs a plain `mcp` SDK server at 1, 16 and 64 connections (stateless
  HTTP), and at 16 with one stateful session;
- auth token endpoint (authorization_code and refresh_token grants, argon2id apart);
- keys: API-key exchange and introspection;
- audit: publish-to-stored throughput and lag under a steady 2,000 events/s.

Writes bench/results/latest.json (top-level `throughput_ratio`: secured/plain calls/s at
16 connections), latest.md (the same as tables) and latest.png (tools latency, plain vs
secured, per concurrency). `--quick` shortens every run (numbers are noisier).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"


def run_step(script: str, args: list[str], output: str) -> dict[str, Any]:
    started = time.monotonic()
    subprocess.run([sys.executable, str(BENCH / script), *args], check=True)  # noqa: S603
    data: dict[str, Any] = json.loads((RESULTS / output).read_text())
    data["bench_seconds"] = round(time.monotonic() - started, 1)
    return data


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# MCP Bastion benchmarks",
        "",
        f"{summary['when']} on {summary['machine']['cpus']} CPUs, Python "
        f"{summary['machine']['python']}. Reproduce with `make bench`.",
        "",
        f"**Throughput ratio (secured / plain, 16 connections): "
        f"{summary['throughput_ratio']}** (target >= 0.85)",
        "",
        "## Tool call: tools pipeline vs a plain mcp SDK server (get_weather)",
        "",
        "| run | plain calls/s | secured calls/s | ratio | plain p50 / p99 ms |"
        " secured p50 / p99 ms | pipeline CPU ms/call |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, run in summary["tools"].items():
        plain, secured = run["plain"], run["secured"]
        lines.append(
            f"| {name} | {plain['calls_per_s']} | {secured['calls_per_s']} | "
            f"{run['throughput_ratio']} | {plain['p50_ms']:.2f} / {plain['p99_ms']:.2f} | "
            f"{secured['p50_ms']:.2f} / {secured['p99_ms']:.2f} | "
            f"{run['pipeline_cpu_ms_per_call']} |"
        )
    lines += ["", "## Other services", "", "| benchmark | result |", "|---|---|"]
    for name in ("auth_tokens", "keys_exchange", "audit_pipeline"):
        for key, value in _flatten(summary[name]).items():
            lines.append(f"| {name}: {key} | {value} |")
    return "\n".join(lines) + "\n"


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        elif not isinstance(value, list):
            out[f"{prefix}{key}"] = value
    return out


def chart(tools: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(tools)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, stat in zip(axes, ("p50_ms", "p99_ms"), strict=True):
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], [tools[n]["plain"][stat] for n in names], 0.4,
               label="plain SDK")  # fmt: skip
        ax.bar([x + 0.2 for x in xs], [tools[n]["secured"][stat] for n in names], 0.4,
               label="tools pipeline")  # fmt: skip
        ax.set_xticks(list(xs), names, rotation=15)
        ax.set_ylabel("ms")
        ax.set_title(f"get_weather latency, {stat.removesuffix('_ms')}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (noisier numbers)")
    args = parser.parse_args()
    duration, rounds = ("5", "1") if args.quick else ("10", "3")
    RESULTS.mkdir(parents=True, exist_ok=True)

    tools: dict[str, Any] = {}
    for connections in ("1", "16", "64"):
        tools[f"stateless c{connections}"] = run_step(
            "tools_overhead.py",
            ["--connections", connections, "--duration", duration, "--rounds", rounds],
            "tools_overhead.json",
        )
    tools["stateful c16"] = run_step(
        "tools_overhead.py",
        ["--stateful", "--duration", duration, "--rounds", rounds],
        "tools_overhead_stateful.json",
    )
    summary: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },  # fmt: skip
        "throughput_ratio": tools["stateless c16"]["throughput_ratio"],
        "tools": tools,
        "auth_tokens": run_step(
            "auth_tokens.py",
            ["--requests", "500" if args.quick else "2000", "--hashes", "5"],
            "auth_tokens.json",
        ),
        "keys_exchange": run_step(
            "keys_exchange.py", ["--duration", duration], "keys_exchange.json"
        ),
        "audit_pipeline": run_step(
            "audit_pipeline.py",
            ["--events", "20000"] if args.quick else [],
            "audit_pipeline.json",
        ),
    }
    (RESULTS / "latest.json").write_text(json.dumps(summary, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(markdown(summary))
    chart(tools, RESULTS / "latest.png")
    print(markdown(summary))


if __name__ == "__main__":
    main()
