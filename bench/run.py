"""`make bench`: every benchmark in one run, collected into bench/results/latest.*.

Runs, one after the other (each script starts its own servers and a private
redis-server, load from wrk pinned to the other core):

- tools pipeline vs a plain `mcp` SDK server at 1, 16 and 64 connections (stateless
  HTTP), and at 16 with a stateful session per connection and in the 2026-07-28
  protocol (no session);
- auth token endpoint (authorization_code and refresh_token grants, argon2id apart);
- keys: API-key exchange and introspection;
- audit: publish-to-stored throughput and lag under a steady 2,000 events/s;
- rate limiter: decisions/s of `RateLimiter.take` against one Redis, and the exactness
  bound with 64 clients on one bucket;
- scaling: tool calls on 1 and 2 `tools` replicas sharing one Redis, and the limits
  across replicas.

Writes bench/results/latest.json (top-level `throughput_ratio`: secured/plain calls/s at
16 connections from alternating runs; `throughput_ratio_together` and
`stateful_throughput_ratio_together`, `modern_throughput_ratio_together`: the same with
both servers loaded at once, the
steadier figure on a VM whose speed drifts), latest.md (the same as tables) and
latest.png (tools latency, plain vs secured, p50/p95/p99, per concurrency). `--quick`
shortens every run (numbers are noisier).
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


def _ms(run: dict[str, Any]) -> str:
    return f"{run['p50_ms']:.2f} / {run['p95_ms']:.2f} / {run['p99_ms']:.2f}"


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# MCP Bastion benchmarks",
        "",
        f"{summary['when']} on {summary['machine']['cpus']} CPUs, Python "
        f"{summary['machine']['python']}. Reproduce with `make bench`.",
        "",
        f"**Throughput ratio (secured / plain, 16 connections): "
        f"{summary['throughput_ratio']}** from alternating runs, "
        f"**{summary['throughput_ratio_together']}** with both servers loaded at once "
        f"(stateful: {summary['stateful_throughput_ratio_together']}, 2026-07-28 protocol: "
        f"{summary['modern_throughput_ratio_together']}; target >= 0.85)",
        "",
        "## Tool call: tools pipeline vs a plain mcp SDK server (get_weather)",
        "",
        "| run | plain calls/s | secured calls/s | ratio | ratio, both at once |"
        " plain p50 / p95 / p99 ms | secured p50 / p95 / p99 ms | pipeline CPU ms/call |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, run in summary["tools"].items():
        plain, secured = run["plain"], run["secured"]
        lines.append(
            f"| {name} | {plain['calls_per_s']} | {secured['calls_per_s']} | "
            f"{run['throughput_ratio']} | {run.get('throughput_ratio_together') or '-'} | "
            f"{_ms(plain)} | {_ms(secured)} | "
            f"{run['pipeline_cpu_ms_per_call']} |"
        )
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
    args = parser.parse_args()
    duration, rounds = ("5", "1") if args.quick else ("10", "3")
    RESULTS.mkdir(parents=True, exist_ok=True)

    tools: dict[str, Any] = {}
    for connections in ("1", "16", "64"):
        # Loaded at once, two servers share a core only when each could fill it alone.
        together = "0" if connections == "1" else ("3" if args.quick else "5")
        tools[f"stateless c{connections}"] = run_step(
            "tools_overhead.py",
            [
                "--connections",
                connections,
                "--duration",
                duration,
                "--rounds",
                rounds,
                "--together-rounds",
                together,
            ],
            "tools_overhead.json",
        )
    for label, flag, result in (
        ("stateful c16", "--stateful", "tools_overhead_stateful.json"),
        ("2026-07-28 c16", "--modern", "tools_overhead_modern.json"),
    ):
        tools[label] = run_step(
            "tools_overhead.py",
            [flag, "--duration", duration, "--rounds", rounds,
             "--together-rounds", "3" if args.quick else "5"],
            result,
        )  # fmt: skip
    summary: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },  # fmt: skip
        "throughput_ratio": tools["stateless c16"]["throughput_ratio"],
        "throughput_ratio_together": tools["stateless c16"]["throughput_ratio_together"],
        "stateful_throughput_ratio_together": tools["stateful c16"]["throughput_ratio_together"],
        "modern_throughput_ratio_together": tools["2026-07-28 c16"]["throughput_ratio_together"],
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
        "ratelimit": run_step(
            "ratelimit.py",
            ["--duration", "2", "--exact-duration", "3"] if args.quick else [],
            "ratelimit.json",
        ),
        "scaling": run_step(
            "scaling.py",
            ["--duration", "3", "--rounds", "1", "--limit-duration", "3"]
            if args.quick
            else ["--duration", duration, "--rounds", rounds],
            "scaling.json",
        ),
    }
    (RESULTS / "latest.json").write_text(json.dumps(summary, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(markdown(summary))
    chart(tools, RESULTS / "latest.png")
    print(markdown(summary))


if __name__ == "__main__":
    main()
