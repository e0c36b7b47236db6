"""Instructions per tool call, plain vs secured: the pipeline's cost in a unit that does
not drift with the machine.

On the project's VM the same server's calls/s moves by up to 40% from one minute to the
next, and by more from one day to the next, so `tools_overhead.py`'s ratios move with it.
This counts what each server executes instead. Each server's ASGI app runs in a process
of its own under `valgrind --tool=callgrind` and is driven directly (no HTTP server: the
layer both would share is left out), 16 callers at once, the same `get_weather` call as
`tools_overhead.py`, against one private redis-server. Counting is zeroed after a
warm-up and dumped after the measured calls (`callgrind_control`), so start-up is left
out. Runs of the plain server agreed to 0.05% in one session and within 1% in another; the
secured server's figure moves by about 1% between runs, because how many rate-limit
decisions share a round trip depends on timing.

Under valgrind a server runs some 50 times slower, so the secured server's audit linger
is raised to 1 s (20 ms at full speed) to keep its audit batches about their real size;
the limiter's batches come out smaller than at full speed, which counts against it.
`--off LAYER` counts the secured server with one layer switched off by
`tools_layers.py`'s start-up hook (limiter, audit, policy, request-context, everything),
so what each layer costs is a difference of two counts, not of two noisy timings. The
summary also gives the garbage collections during the counted calls: the callers run in
lockstep, so a wave of calls waiting on Redis at once holds its objects together, and
how many a call has made before its first wait decides how often generation 0 is
collected (the served servers under wrk collect about equally often).
Needs valgrind (`apt-get install valgrind`). A run takes two to five minutes.

    .venv/bin/python bench/diagnostics/tools_instructions.py [--calls 320] [--stateful | --modern]
        [--off LAYER]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Run as `python bench/diagnostics/x.py`: the shared harness lives one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import (  # noqa: E402 - needs the path above
    MODERN_WEATHER_CALL,
    ROOT,
    WEATHER_CALL,
    Issuer,
    Processes,
    mcp_headers,
    require,
    tools_env,
    write_result,
)
from tools_ab import python_path  # noqa: E402
from tools_layers import LAYERS, SWITCH, write_hook  # noqa: E402

CONCURRENCY = 16
PUBLIC_URL = "http://localhost:9999"

Headers = list[tuple[bytes, bytes]]


async def _call(app: Any, headers: Headers, body: bytes) -> tuple[int, Headers, bytes]:
    """One POST /mcp through the ASGI app; status, headers and body of its answer."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/mcp", "raw_path": b"/mcp", "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 9999),
        "headers": [*headers, (b"content-length", str(len(body)).encode())], "state": {},
    }  # fmt: skip
    sent = False
    answered = asyncio.Event()
    start: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                answered.set()

    await app(scope, receive, send)
    return int(start["status"]), list(start.get("headers", [])), b"".join(chunks)


async def _session(app: Any, headers: Headers) -> Headers:
    """initialize + notifications/initialized: the headers with the session's id."""
    init = json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"}}}).encode()  # fmt: skip
    _status, answer, _body = await _call(app, headers, init)
    session = dict(answer)[b"mcp-session-id"]
    with_session = [*headers, (b"mcp-session-id", session)]
    note = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode()
    await _call(app, with_session, note)
    return with_session


async def _drive(app: Any, headers: Headers, mode: str, calls: int, warmup: int) -> list[int]:
    """Warm up, then the counted calls; the garbage collections (per generation) they
    caused."""
    body = MODERN_WEATHER_CALL if mode == "modern" else WEATHER_CALL
    sessions = [
        await _session(app, headers) if mode == "stateful" else headers for _ in range(CONCURRENCY)
    ]
    next_id = 2

    async def caller(own: Headers, count: int) -> None:
        nonlocal next_id
        for _ in range(count):
            next_id += 1  # ids unique within a session: the server routes answers by id
            request = body.replace('"id": 1,', f'"id": {next_id},').encode()
            status, _headers, answer = await _call(app, own, request)
            if status != 200 or b'"isError":true' in answer or b'"error"' in answer:
                raise RuntimeError(f"the bench call failed: {status} {answer[:300]!r}")

    async def round_of(total: int) -> None:
        await asyncio.gather(*(caller(own, total // CONCURRENCY) for own in sessions))

    await round_of(warmup)
    counting = shutil.which("callgrind_control")
    if counting:
        subprocess.run([counting, "-z", str(os.getpid())], check=True, capture_output=True)
    before = [generation["collections"] for generation in gc.get_stats()]
    await round_of(calls)
    if counting:
        subprocess.run([counting, "-d", "measured", str(os.getpid())], check=True,
                       capture_output=True)  # fmt: skip
    after = [generation["collections"] for generation in gc.get_stats()]
    return [a - b for a, b in zip(after, before, strict=True)]


def measure(which: str, mode: str, calls: int, redis_url: str, token: str, out: str) -> None:
    """Child process (under valgrind): build one app, warm it up, run the counted calls;
    the collections they caused go to `out`/`which`.gc.json."""
    from bastion_common.service import freeze_startup_objects

    stateless = mode != "stateful"
    if which == "plain":
        from tools_overhead import plain_app

        app = plain_app(redis_url, stateless)
        headers = mcp_headers(None, modern=mode == "modern")
        host = "127.0.0.1:9999"
    else:
        from bastion_common.logging import configure_logging
        from bastion_common.settings import load_settings
        from bastion_tools.app import create_app
        from bastion_tools.settings import Settings

        configure_logging("tools", "WARNING")
        app = create_app(load_settings(Settings))
        headers = mcp_headers(token, modern=mode == "modern")
        host = "localhost:9999"
    raw = [(k.lower().encode(), v.encode()) for k, v in {**headers, "Host": host}.items()]

    async def run() -> list[int]:
        async with app.router.lifespan_context(app):
            freeze_startup_objects()  # as the served processes do
            return await _drive(app, raw, mode, calls, warmup=max(CONCURRENCY, calls // 2))

    collections = asyncio.run(run())
    (Path(out) / f"{which}.gc.json").write_text(json.dumps(collections))


def _instructions(dump_dir: Path, which: str) -> int:
    dumps = sorted(dump_dir.glob(f"{which}.*.1"))  # the first dump: the measured calls
    if not dumps:
        raise RuntimeError(f"callgrind wrote no dump for the {which} server")
    for line in dumps[0].read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no instruction count in {dumps[0]}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=320, help="counted calls per server")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--stateful", action="store_true", help="one session per caller")
    modes.add_argument("--modern", action="store_true", help="the 2026-07-28 protocol")
    parser.add_argument(
        "--off", choices=LAYERS,
        help="count the secured server with this layer switched off (tools_layers' hook)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    require("valgrind", "callgrind_control", "redis-server")
    mode = "stateful" if args.stateful else "modern" if args.modern else "stateless"
    calls = max(CONCURRENCY, args.calls // CONCURRENCY * CONCURRENCY)

    with Processes("tools-instructions-") as procs, tempfile.TemporaryDirectory() as out:
        _, redis_url = procs.redis()
        issuer = Issuer()
        env = tools_env(port=9999, public_url=PUBLIC_URL, redis_url=redis_url, issuer=issuer,
                        workdir=procs.workdir, stateless=mode != "stateful")  # fmt: skip
        env["TOOLS_AUDIT_LINGER_SECONDS"] = "1.0"
        envs = {"plain": env, "secured": env}
        if args.off:
            hook = write_hook(Path(out) / "hook")
            envs["secured"] = {**env, SWITCH: args.off,
                               "PYTHONPATH": f"{hook}{os.pathsep}{python_path(ROOT)}"}  # fmt: skip
        token = issuer.token(f"{PUBLIC_URL}/mcp")
        children = {
            which: subprocess.Popen(
                [
                    "valgrind",
                    "--tool=callgrind",
                    f"--callgrind-out-file={out}/{which}.%p",
                    sys.executable,
                    __file__,
                    "measure",
                    which,
                    mode,
                    str(calls),
                    redis_url,
                    token,
                    out,
                ],
                env=envs[which],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )  # fmt: skip
            for which in ("plain", "secured")
        }
        for which, child in children.items():
            _stdout, stderr = child.communicate()
            if child.returncode != 0:
                tail = stderr.decode(errors="replace").strip().splitlines()[-5:]
                raise RuntimeError(f"the {which} server failed: " + " | ".join(tail))
        counted = {which: _instructions(Path(out), which) / calls for which in children}
        collections = {
            which: json.loads((Path(out) / f"{which}.gc.json").read_text()) for which in children
        }
        issuer.close()

    plain, secured = counted["plain"], counted["secured"]
    summary = {
        "mode": mode,
        "calls": calls,
        "concurrency": CONCURRENCY,
        "plain_instructions_per_call": round(plain),
        "secured_instructions_per_call": round(secured),
        "pipeline_instructions_per_call": round(secured - plain),
        "instruction_ratio": round(plain / secured, 3),
        "secured_layer_off": args.off,
        # Collections (generations 0, 1, 2) during the counted calls: this harness's
        # callers run in lockstep, so each wave of calls that waits on Redis at once
        # holds its objects together, and gen-0 collections follow how many a call
        # allocates before it first waits.
        "gc_collections": collections,
    }
    print(json.dumps(summary, indent=2))
    write_result(f"tools_instructions_{mode}" + (f"_{args.off}_off" if args.off else ""), summary)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "measure":
        which, mode, calls, redis_url, token, out = sys.argv[2:8]
        measure(which, mode, int(calls), redis_url, token, out)
    else:
        main()
