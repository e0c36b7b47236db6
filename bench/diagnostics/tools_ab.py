"""Two versions of the `tools` server, loaded at once on one core: is B faster than A?

A change to the pipeline that saves 1% of a call's CPU is lost in this VM's drift when
two runs are compared one after the other (the same server's calls/s moves by up to 40%
between runs). Here both versions serve at once, pinned to CPU 0, each loaded by its
own `wrk` on CPU 1: the scheduler gives each half of the core, so the ratio of their
calls/s over the same seconds is the ratio of their CPU per call, and whatever the host
does to the clock falls on both. Comparing a version with itself reads 0.99-1.01.

`--alone` loads each side on its own instead, A and B in turn: time a server spends
waiting with nothing to do (all its calls waiting on one Redis round trip, say) does
not show when the two share a core, because the other one fills it. Drift between the
two runs then counts too.

Each side is a git ref of this repository (exported with `git archive` into a
temporary folder) or `.` for the working tree as it is; both run in this checkout's
virtual environment, so the two refs must agree on dependencies. Prints each round's
calls/s and the share of its core each side kept busy, and the median ratio B/A.

    .venv/bin/python bench/diagnostics/tools_ab.py --a HEAD --b . [--modern | --stateful]
    .venv/bin/python bench/diagnostics/tools_ab.py --a HEAD~3 --b HEAD --rounds 8
    .venv/bin/python bench/diagnostics/tools_ab.py --a HEAD --b . --modern --alone --rounds 12
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Run as `python bench/diagnostics/x.py`: the shared harness lives one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import (  # noqa: E402 - needs the path above
    MODERN_WEATHER_CALL,
    PYTHON,
    ROOT,
    SERVER_CPU,
    WEATHER_CALL,
    Issuer,
    Processes,
    Wrk,
    check_call,
    cpu_seconds,
    free_port,
    mcp_headers,
    median,
    open_session,
    pinned,
    require,
    tools_env,
    wait_port,
)

_TREES = ("libs/common", "services/tools")


def source_tree(ref: str, into: Path) -> Path:
    """The folder holding `ref`'s sources: the checkout for `.`, else an export."""
    if ref == ".":
        return ROOT
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, *_TREES], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def python_path(tree: Path) -> str:
    return os.pathsep.join(str(tree / part / "src") for part in _TREES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", default="HEAD", help="git ref, or . for the working tree")
    parser.add_argument("--b", default=".", help="git ref, or . for the working tree")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--stateful", action="store_true", help="one session per connection")
    parser.add_argument("--modern", action="store_true", help="the 2026-07-28 protocol")
    parser.add_argument(
        "--alone",
        action="store_true",
        help="load each side on its own, A and B in turn (idle time counts, drift does too)",
    )
    args = parser.parse_args()
    require("wrk", "redis-server", "git")
    if args.modern and args.stateful:
        parser.error("the 2026-07-28 protocol has no sessions: --modern excludes --stateful")
    stateless = not args.stateful
    call = MODERN_WEATHER_CALL if args.modern else WEATHER_CALL

    with Processes("tools-ab-") as procs, tempfile.TemporaryDirectory() as exports:
        _, redis_url = procs.redis()
        issuer = Issuer()
        servers: dict[str, tuple[str, str]] = {}  # side: (url, token)
        pids: dict[str, int] = {}
        for side, ref in (("A", args.a), ("B", args.b)):
            tree = source_tree(ref, Path(exports) / side)
            port = free_port()
            public_url = f"http://localhost:{port}"
            env = tools_env(port=port, public_url=public_url, redis_url=redis_url,
                            issuer=issuer, workdir=procs.workdir, stateless=stateless)  # fmt: skip
            env["PYTHONPATH"] = python_path(tree)
            pids[side] = procs.start(
                pinned([PYTHON, "-m", "bastion_tools"], SERVER_CPU), env=env
            ).pid
            servers[side] = (f"{public_url}/mcp", issuer.token(f"{public_url}/mcp"))
        sessions: dict[str, list[str]] = {}
        for side, (url, token) in servers.items():
            wait_port(int(url.rsplit(":", 1)[1].split("/")[0]))
            sessions[side] = (
                [] if stateless else [open_session(url, token) for _ in range(args.connections)]
            )
            check_call(url, token, sessions[side][0] if sessions[side] else None,
                       modern=args.modern)  # fmt: skip

        def load(side: str, duration: float) -> Wrk:
            url, token = servers[side]
            return Wrk(url, call, mcp_headers(token, modern=args.modern), args.connections,
                       duration, sessions=sessions[side])  # fmt: skip

        for side in servers:  # warm both (caches, the limiter's connection, the JIT-less VM)
            load(side, 3).run()
        ratios: list[float] = []
        for round_no in range(args.rounds):
            order = ("A", "B") if round_no % 2 == 0 else ("B", "A")  # neither always first
            # The share of CPU 0 each side kept busy (CPU seconds over wall seconds): below
            # 1 alone, or below a half with both at once, it waited with nothing to do.
            before = {side: cpu_seconds(pid) for side, pid in pids.items()}
            if args.alone:
                done = {}
                for side in order:
                    before[side] = cpu_seconds(pids[side])
                    done[side] = load(side, args.duration).run()
            else:
                started = {side: load(side, args.duration).start() for side in order}
                done = {side: wrk.result() for side, wrk in started.items()}
            busy = {side: (cpu_seconds(pids[side]) - before[side]) / done[side]["duration_s"]
                    for side in order}  # fmt: skip
            a, b = done["A"]["calls_per_s"], done["B"]["calls_per_s"]
            ratios.append(b / a)
            print(f"round {round_no + 1}/{args.rounds}: A {a:.0f}/s, B {b:.0f}/s, B/A "
                  f"{ratios[-1]:.3f}, busy A {busy['A']:.3f} B {busy['B']:.3f}",
                  file=sys.stderr)  # fmt: skip
        issuer.close()
    mode = "2026-07-28" if args.modern else "stateful" if args.stateful else "stateless"
    mode += ", each alone" if args.alone else ", both at once"
    print(
        f"B/A calls/s: median {median(ratios):.3f} over {len(ratios)} rounds "
        f"(range {min(ratios):.3f}-{max(ratios):.3f}; {mode}; A={args.a}, B={args.b})"
    )


if __name__ == "__main__":
    main()
