"""`make bench`: every benchmark in one run, collected into bench/results/latest.*.

First the measures of issue 23's table, each a script of its own that starts its own
servers and a private redis-server, with the load from wrk pinned to the other core:

- added latency per call at 1 connection, plain `mcp` SDK server vs the tools service,
  same tool (get_weather, one Redis read), stateless, stateful and 2026-07-28
  (`tools_overhead.py --connections 1`);
- throughput at 16 connections against the SDK's own bearer auth and against FastMCP
  with its JWTVerifier and rate limiting (`peers.py`);
- throughput at 16 connections with a tool that spends 1 ms of CPU per call
  (`tools_overhead.py --tool-cpu-ms 1`), and with the no-op tool in the three modes;
- pipeline instructions per call under callgrind, 2026-07-28
  (`diagnostics/tools_instructions.py`; skipped with a note when valgrind is missing).

Then the other services: auth token endpoint, keys exchange and introspection, the audit
pipeline, the rate limiter, and tools on 1 and 2 replicas.

Writes bench/results/latest.json, latest.md (the summary table first, between the
markers `readme_table.py` copies into README.md, then the details) and latest.png
(tools latency, plain vs secured, p50/p95/p99). `--quick` shortens every run (a few
minutes in all; the numbers are noisier).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
TABLE_START = "<!-- bench-table:start -->"
TABLE_END = "<!-- bench-table:end -->"
TABLE_HEADER = "| measure | target | measured | met |"
MODES = {"stateless": [], "stateful": ["--stateful"], "2026-07-28": ["--modern"]}
TOOLS_FILES = {"stateless": "", "stateful": "_stateful", "2026-07-28": "_modern"}


def run_step(script: str, args: list[str], output: str) -> dict[str, Any]:
    started = time.monotonic()
    subprocess.run([sys.executable, str(BENCH / script), *args], check=True)  # noqa: S603
    data: dict[str, Any] = json.loads((RESULTS / output).read_text())
    data["bench_seconds"] = round(time.monotonic() - started, 1)
    return data


def _ms(run: dict[str, Any]) -> str:
    return f"{run['p50_ms']:.2f} / {run['p95_ms']:.2f} / {run['p99_ms']:.2f}"


def _x(value: float) -> str:
    return f"{value:.2f}x"


def _range(values: list[float]) -> str:
    return f"{values[0]:.2f}-{values[1]:.2f}"


def table(summary: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Issue 23's five rows: (measure, target, measured, met)."""
    tools, peers = summary["tools"], summary["peers"]
    latency = {mode: tools[f"{mode} c1"] for mode in MODES}
    added = "; ".join(
        f"{mode} +{run['pipeline_p50_ms']:.2f} / +{run['pipeline_p99_ms']:.2f} ms"
        for mode, run in latency.items()
    )
    latency_met = all(
        run["pipeline_p50_ms"] <= 0.4 and run["pipeline_p99_ms"] <= 1.0 for run in latency.values()
    )
    sdk, every, fastmcp = peers["vs_sdk"], peers["vs_sdk_every_call"], peers["vs_fastmcp"]
    servers = peers["servers"]
    cpu = tools["stateless c16, 1 ms CPU tool"]
    noop = {mode: tools[f"{mode} c16"] for mode in MODES}
    instructions = summary.get("instructions")
    counted = (
        f"; pipeline {instructions['pipeline_instructions_per_call']:,} instructions per call "
        f"(2026-07-28, {instructions['plain_instructions_per_call']:,} vs "
        f"{instructions['secured_instructions_per_call']:,})"
        if instructions
        else "; instructions not counted (no valgrind)"
    )

    def yes(met: bool) -> str:
        return "yes" if met else "**no**"

    return [
        (
            "added latency per call, 1 connection, p50 / p99",
            "<= 0.4 / <= 1 ms",
            added,
            yes(latency_met),
        ),
        (
            "throughput vs the mcp SDK's bearer auth, 16 connections",
            ">= 1.0x",
            f"{_x(sdk['median'])} (rounds {sdk['min']:.2f}-{sdk['max']:.2f}; "
            f"{servers['bastion']['calls_per_s']:.0f} vs {servers['sdk']['calls_per_s']:.0f} "
            f"calls/s); {_x(every['median'])} vs the SDK verifying every call",
            yes(sdk["median"] >= 1.0),
        ),
        (
            "throughput vs FastMCP, JWTVerifier + rate limiting, 16 connections",
            ">= 2x",
            f"{_x(fastmcp['median'])} (rounds {fastmcp['min']:.2f}-{fastmcp['max']:.2f}; "
            f"{servers['fastmcp']['calls_per_s']:.0f} calls/s)",
            yes(fastmcp["median"] >= 2.0),
        ),
        (
            "throughput, a tool spending 1 ms of CPU per call, 16 connections",
            ">= 0.9x plain",
            f"{_x(cpu['throughput_ratio_paired'])} (rounds "
            f"{_range(cpu['throughput_ratio_range'])}; {cpu['secured']['calls_per_s']:.0f} vs "
            f"{cpu['plain']['calls_per_s']:.0f} calls/s)",
            yes(cpu["throughput_ratio_paired"] >= 0.9),
        ),
        (
            "throughput, no-op tool, 16 connections; pipeline instructions per call",
            ">= 0.75x plain; instructions reported",
            "; ".join(f"{mode} {_x(run['throughput_ratio_paired'])}" for mode, run in noop.items())
            + counted,  # fmt: skip
            yes(all(run["throughput_ratio_paired"] >= 0.75 for run in noop.values())),
        ),
    ]


def render_table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    return [TABLE_HEADER, "|---|---|---|---|", *(f"| {' | '.join(row)} |" for row in rows)]


def markdown(summary: dict[str, Any]) -> str:
    peers = summary["peers"]
    lines = [
        "# MCP Bastion benchmarks",
        "",
        f"{summary['when']} on {summary['machine']['cpus']} CPUs, Python "
        f"{summary['machine']['python']}, `{summary['command']}`; load average "
        f"{summary['machine']['load_before']} before the run (other work on the machine "
        "falls on both sides of each comparison alike, rounds alternate).",
        "",
        TABLE_START,
        *render_table(table(summary)),
        TABLE_END,
        "",
        "Plain: the `mcp` SDK's MCPServer serving the same tool with no security. Secured: "
        "the tools service (`python -m bastion_tools`). Ratios are medians of each round's "
        "ratio; latency differences are of the medians of the rounds' p50 and p99.",
        "",
        f"## Peers ({peers['connections']} connections, {peers['mode']}, "
        f"{peers['rounds']} rounds of {peers['duration_s']} s)",
        "",
        "| server | versions | enforces | calls/s | p50 / p99 ms | CPU ms/call | busy |"
        " refuses (no token / other audience / no scope) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, run in peers["servers"].items():
        versions = ", ".join(f"{k} {v}" for k, v in peers["versions"][name].items())
        refused = " / ".join(str(v) for v in peers["refusals"][name].values())
        lines.append(
            f"| {name} | {versions} | {peers['enforces'][name]} | {run['calls_per_s']:.0f} | "
            f"{run['p50_ms']:.2f} / {run['p99_ms']:.2f} | {run['server_cpu_ms_per_call']:.3f} | "
            f"{run['server_busy']:.2f} | {refused} |"
        )
    lines += [
        "",
        "## Tool call: tools pipeline vs a plain mcp SDK server (get_weather)",
        "",
        "| run | plain calls/s | secured calls/s | ratio (rounds) | ratio, both at once |"
        " plain p50 / p95 / p99 ms | secured p50 / p95 / p99 ms | pipeline CPU ms/call |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, run in summary["tools"].items():
        plain, secured = run["plain"], run["secured"]
        lines.append(
            f"| {name} | {plain['calls_per_s']:.0f} | {secured['calls_per_s']:.0f} | "
            f"{run['throughput_ratio_paired']} ({_range(run['throughput_ratio_range'])}) | "
            f"{run.get('throughput_ratio_together') or '-'} | "
            f"{_ms(plain)} | {_ms(secured)} | {run['pipeline_cpu_ms_per_call']} |"
        )
    instructions = summary.get("instructions")
    if instructions:
        lines += [
            "",
            f"Callgrind, {instructions['mode']}, {instructions['calls']} calls: plain "
            f"{instructions['plain_instructions_per_call']:,}, secured "
            f"{instructions['secured_instructions_per_call']:,} instructions per call "
            f"(pipeline {instructions['pipeline_instructions_per_call']:,}).",
        ]
    if "scaling" not in summary:
        return "\n".join(lines) + "\n"
    lines += _scaling(summary["scaling"]) + _ratelimit(summary["ratelimit"])
    keys = summary["keys_exchange"]
    lines += [
        "",
        f"## Keys service ({keys['connections']} connections)",
        "",
        "| endpoint | requests/s | p50 / p95 / p99 ms | server CPU ms/request | errors |",
        "|---|---|---|---|---|",
    ]
    for name in ("exchange", "introspect"):
        run = keys[name]
        lines.append(
            f"| {name} | {run['calls_per_s']} | {_ms(run)} | "
            f"{run['server_cpu_ms_per_request']} | {run['errors']} |"
        )
    lines += ["", "## Other services", "", "| benchmark | result |", "|---|---|"]
    for name in ("auth_tokens", "audit_pipeline"):
        for key, value in _flatten(summary[name]).items():
            lines.append(f"| {name}: {key} | {value} |")
    return "\n".join(lines) + "\n"


def _scaling(scaling: dict[str, Any]) -> list[str]:
    limits = scaling["limits"]
    lines = [
        "",
        f"## Scaling: 1 and 2 tools replicas, one Redis ({scaling['connections']} connections"
        " in all)",
        "",
        scaling["note"],
        "",
        "| replicas | calls/s | p50 / p95 / p99 ms | server CPU ms/call (all replicas) |",
        "|---|---|---|---|",
    ]
    for name, run in scaling["replicas"].items():
        lines.append(
            f"| {name} | {run['calls_per_s']} | {_ms(run)} | {run['server_cpu_ms_per_call']} |"
        )
    lines += [
        "",
        f"CPU per call, 2 replicas / 1: {scaling['cpu_per_call_ratio']}.",
        "",
        "| limits across replicas | capacity | refill/s | window s | 200s (by replica) |"
        " bound | exact |",
        "|---|---|---|---|---|---|---|",
        f"| one principal, both replicas | {limits['capacity']} | {limits['refill_per_s']} | "
        f"{limits['window_s']} | {limits['allowed_200']} "
        f"({' + '.join(map(str, limits['allowed_by_replica']))}) | {limits['bound']} | "
        f"{'yes' if limits['exact'] else '**no**'} |",
    ]
    return lines


def _ratelimit(ratelimit: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Rate limiter: RateLimiter.take against one Redis",
        "",
        "| processes x tasks | decisions/s | p50 / p95 / p99 ms | client CPU us/decision |"
        " Redis CPU us/decision | Redis busy |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {run['processes']} x {run['tasks_per_process']} | {run['decisions_per_s']} | "
        f"{_ms(run)} | {run['client_cpu_us_per_decision']} | "
        f"{run['redis_cpu_us_per_decision']} | {run['redis_busy']:.0%} |"
        for run in ratelimit["throughput"]
    ]
    lines += [
        "",
        "| exactness: clients on one bucket | capacity | refill/s | window s | decisions |"
        " allowed | bound | exact |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {check['clients']} in {check['processes']} process(es) | {check['capacity']} | "
        f"{check['refill_per_s']} | {check['window_s']} | {check['decisions']} | "
        f"{check['allowed']} | {check['bound']} | {'yes' if check['exact'] else '**no**'} |"
        for check in ratelimit["exactness"]
    ]
    return lines


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
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, stat in zip(axes, ("p50_ms", "p95_ms", "p99_ms"), strict=True):
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], [tools[n]["plain"][stat] for n in names], 0.4,
               label="plain SDK")  # fmt: skip
        ax.bar([x + 0.2 for x in xs], [tools[n]["secured"][stat] for n in names], 0.4,
               label="tools pipeline")  # fmt: skip
        ax.set_xticks(list(xs), names, rotation=15)
        ax.set_yscale("log")  # 1 and 64 connections differ by two orders of magnitude
        ax.set_ylabel("ms (log scale)")
        ax.set_title(f"get_weather latency, {stat.removesuffix('_ms')}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (noisier numbers)")
    parser.add_argument(
        "--table-only", action="store_true", help="issue 23's measures only, not the other services"
    )
    args = parser.parse_args()
    quick = args.quick
    duration, rounds, warmup = ("3", "2", "1") if quick else ("8", "5", "3")
    together = "2" if quick else "5"
    RESULTS.mkdir(parents=True, exist_ok=True)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())

    def overhead(extra: list[str], connections: str, output: str) -> dict[str, Any]:
        return run_step(
            "tools_overhead.py",
            [*extra, "--connections", connections, "--duration", duration, "--rounds", rounds,
             "--warmup", warmup],
            output,
        )  # fmt: skip

    tools: dict[str, Any] = {}
    for mode, flags in MODES.items():
        tools[f"{mode} c1"] = overhead(
            [*flags, "--together-rounds", "0"], "1", f"tools_overhead{TOOLS_FILES[mode]}_c1.json"
        )
    for mode, flags in MODES.items():
        tools[f"{mode} c16"] = overhead(
            [*flags, "--together-rounds", together], "16",
            f"tools_overhead{TOOLS_FILES[mode]}_c16.json",
        )  # fmt: skip
    tools["stateless c16, 1 ms CPU tool"] = overhead(
        ["--tool-cpu-ms", "1", "--together-rounds", "0"], "16", "tools_overhead_cpu1_c16.json"
    )
    summary: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "make bench" + (" BENCH_ARGS=--quick" if quick else ""),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_before": load_before,
        },
        "tools": tools,
        "peers": run_step(
            "peers.py",
            ["--duration", duration, "--rounds", rounds, "--warmup", warmup],
            "peers.json",
        ),
    }
    if shutil.which("valgrind"):
        summary["instructions"] = run_step(
            "diagnostics/tools_instructions.py",
            ["--modern", "--calls", "160" if quick else "320"],
            "tools_instructions_modern.json",
        )
    if not args.table_only:
        summary.update(
            auth_tokens=run_step(
                "auth_tokens.py",
                ["--requests", "500" if quick else "2000", "--hashes", "5"],
                "auth_tokens.json",
            ),
            keys_exchange=run_step(
                "keys_exchange.py", ["--duration", duration], "keys_exchange.json"
            ),
            audit_pipeline=run_step(
                "audit_pipeline.py", ["--events", "20000"] if quick else [], "audit_pipeline.json"
            ),
            ratelimit=run_step(
                "ratelimit.py",
                ["--duration", "2", "--exact-duration", "3"] if quick else [],
                "ratelimit.json",
            ),
            scaling=run_step(
                "scaling.py",
                ["--duration", "3", "--rounds", "1", "--limit-duration", "3"]
                if quick
                else ["--duration", duration, "--rounds", rounds],
                "scaling.json",
            ),
        )
    (RESULTS / "latest.json").write_text(json.dumps(summary, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(markdown(summary))
    chart(tools, RESULTS / "latest.png")
    print(markdown(summary))


if __name__ == "__main__":
    main()
