"""Where the pipeline's CPU goes: each layer of `tools` switched off in turn, on the real
server, against the full pipeline.

`tools_overhead.py` says what the whole pipeline costs next to a plain SDK server;
this says which layer it is spent in. Each round loads two `tools` servers at once on
CPU 0, as `tools_ab.py` does (so the VM's drift falls on both): the full pipeline, and
the same code with one layer switched off. The fraction of CPU per call the second
saves over the same seconds is what that layer costs. The switch is a start-up hook of
this benchmark alone (a `sitecustomize` module on the second server's PYTHONPATH,
written to a temporary folder): nothing in the services can turn a check off.

Layers (`--layers`, all by default):
- limiter: the one Redis round trip for revocation and rate limit (`RateLimiter.take`
  answers "allowed" at once);
- audit: every audit event (`Auditor.emit` does nothing);
- policy: the SDK middleware (`ToolCallPolicy`: tools/list filtering, the second RBAC
  check, the tool.called event and latency metric);
- request-context: request id, HTTP metrics and the last-resort 500
  (`RequestContextMiddleware` passes the request on);
- everything: the guard, the policy and the request context all off, which leaves
  the SDK and the tools inside the service's FastAPI app.

Two servers running the same code read within 2% of each other over 6 rounds on this
VM (`tools_ab.py`), so a layer under 2% cannot be told apart from nothing. Writes
bench/results/tools_layers[_modern|_stateful].json.

    .venv/bin/python bench/diagnostics/tools_layers.py [--modern | --stateful] [--rounds 6]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

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
    write_result,
)
from tools_ab import python_path  # noqa: E402

LAYERS = ("limiter", "audit", "policy", "request-context", "everything")
SWITCH = "BENCH_LAYER_OFF"

# The start-up hook: imported by the interpreter before `-m bastion_tools` runs, it
# replaces the named layer's entry point on its class (the service then builds its
# objects from the patched classes).
HOOK = """
import os

OFF = os.environ.get("BENCH_LAYER_OFF", "")


def _limiter():
    from bastion_tools.ratelimit import Decision, RateLimiter

    async def take(self, bucket_key, *, capacity, refill_per_second, **_checks):
        return Decision("allowed", capacity, float(capacity), 0.0, refill_per_second)

    RateLimiter.take = take


def _audit():
    from bastion_common.auditor import Auditor

    Auditor.emit = lambda self, *args, **kwargs: None


def _policy():
    from bastion_tools.policy import ToolCallPolicy

    async def passthrough(self, ctx, call_next):
        return await call_next(ctx)

    ToolCallPolicy.__call__ = passthrough


def _request_context():
    from bastion_common.http import RequestContextMiddleware

    async def passthrough(self, scope, receive, send):
        await self.app(scope, receive, send)

    RequestContextMiddleware.__call__ = passthrough


def _everything():
    from bastion_tools.guard import Guard

    async def passthrough(self, scope, receive, send):
        await self.app(scope, receive, send)

    _policy()
    _request_context()
    Guard.__call__ = passthrough


SWITCHES = {"limiter": _limiter, "audit": _audit, "policy": _policy,
            "request-context": _request_context, "everything": _everything}
if OFF:
    if OFF not in SWITCHES:
        raise SystemExit(f"BENCH_LAYER_OFF: no layer {OFF!r} (one of {sorted(SWITCHES)})")
    SWITCHES[OFF]()
"""


def write_hook(folder: Path) -> Path:
    """The hook module in `folder` (put it first on the PYTHONPATH of the server)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(HOOK)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", nargs="+", choices=LAYERS, default=list(LAYERS))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--stateful", action="store_true", help="one session per connection")
    parser.add_argument("--modern", action="store_true", help="the 2026-07-28 protocol")
    args = parser.parse_args()
    require("wrk", "redis-server")
    if args.modern and args.stateful:
        parser.error("the 2026-07-28 protocol has no sessions: --modern excludes --stateful")
    stateless = not args.stateful
    call = MODERN_WEATHER_CALL if args.modern else WEATHER_CALL
    source = python_path(ROOT)

    with Processes("tools-layers-") as procs, tempfile.TemporaryDirectory() as scratch:
        hook = write_hook(Path(scratch) / "hook")
        _, redis_url = procs.redis()
        issuer = Issuer()

        def start(off: str | None) -> dict[str, Any]:
            port = free_port()
            public_url = f"http://localhost:{port}"
            env = tools_env(port=port, public_url=public_url, redis_url=redis_url,
                            issuer=issuer, workdir=procs.workdir, stateless=stateless)  # fmt: skip
            env["PYTHONPATH"] = source if off is None else f"{hook}{os.pathsep}{source}"
            if off is not None:
                env[SWITCH] = off
            proc = procs.start(pinned([PYTHON, "-m", "bastion_tools"], SERVER_CPU), env=env)
            url, token = f"{public_url}/mcp", issuer.token(f"{public_url}/mcp")
            wait_port(port)
            sessions = [] if stateless else [open_session(url, token)
                                             for _ in range(args.connections)]  # fmt: skip
            check_call(url, token, sessions[0] if sessions else None, modern=args.modern)
            server = {"proc": proc, "url": url, "token": token, "sessions": sessions}
            load(server, 3).run()  # warm caches, the limiter's connection
            return server

        def load(server: dict[str, Any], duration: float) -> Wrk:
            return Wrk(server["url"], call, mcp_headers(server["token"], modern=args.modern),
                       args.connections, duration, sessions=server["sessions"])  # fmt: skip

        full = start(None)
        layers: dict[str, dict[str, float]] = {}
        for layer in args.layers:
            without = start(layer)
            saved: list[float] = []
            for round_no in range(args.rounds):
                pair = (full, without) if round_no % 2 == 0 else (without, full)
                before = [cpu_seconds(server["proc"].pid) for server in pair]
                started = [load(server, args.duration).start() for server in pair]
                done = [wrk.result() for wrk in started]
                cpu = {
                    id(server): (cpu_seconds(server["proc"].pid) - start_cpu) * 1e6
                    / max(1, run["requests"])
                    for server, start_cpu, run in zip(pair, before, done, strict=True)
                }  # fmt: skip
                saved.append(1 - cpu[id(without)] / cpu[id(full)])
                print(f"{layer} round {round_no + 1}/{args.rounds}: cpu per call "
                      f"{cpu[id(full)]:.0f} us full, {cpu[id(without)]:.0f} us without, "
                      f"saves {saved[-1]:.1%}", file=sys.stderr)  # fmt: skip
            without["proc"].terminate()
            without["proc"].wait(timeout=10)
            layers[layer] = {"cpu_share": round(median(saved), 3),
                             "min": round(min(saved), 3), "max": round(max(saved), 3)}  # fmt: skip
        issuer.close()

    mode = "2026-07-28" if args.modern else "stateful" if args.stateful else "stateless"
    summary = {"mode": mode, "connections": args.connections, "rounds": args.rounds,
               "layers": layers}  # fmt: skip
    print(json.dumps(summary, indent=2))
    write_result("tools_layers" + ("_modern" if args.modern else "_stateful" if args.stateful
                                   else ""), summary)  # fmt: skip


if __name__ == "__main__":
    main()
