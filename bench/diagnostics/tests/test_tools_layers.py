"""The layer benchmark's switch: it turns off the layer it names, and only with its hook.

A switch that silently did nothing would report every layer as free, so each one is
tried in a fresh interpreter started as the benchmark starts the server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# The diagnostics import each other and the harness one folder up, as when run.
sys.path[:0] = [str(Path(__file__).resolve().parents[n]) for n in (1, 2)]

import tools_layers  # noqa: E402 - needs the path above
from harness import ROOT  # noqa: E402
from tools_ab import python_path  # noqa: E402

SOURCE = python_path(ROOT)  # what the benchmark runs: this checkout's sources

# Prints what each layer's entry point does when called the way the service calls it.
PROBE = """
import asyncio
from bastion_common.http import RequestContextMiddleware
from bastion_common.auditor import Auditor
from bastion_tools.guard import Guard
from bastion_tools.policy import ToolCallPolicy
from bastion_tools.ratelimit import RateLimiter

async def main():
    limiter = RateLimiter.__new__(RateLimiter)  # no Redis: only a switched-off one answers
    try:
        decision = await limiter.take("rl:sub:x", capacity=5, refill_per_second=1.0)
        print("probe limiter", decision.status)
    except Exception as exc:
        print("probe limiter", type(exc).__name__)

    auditor = Auditor.__new__(Auditor)  # no publisher: only a switched-off one is silent
    try:
        auditor.emit("tool.called", "success", tool="get_weather")
        print("probe audit off")
    except Exception as exc:
        print("probe audit", type(exc).__name__)

    async def call_next(ctx):
        return "next"
    policy = ToolCallPolicy({}, auditor)
    class Ctx:  # a tools/call without a principal: the policy refuses it
        method = "tools/call"
        request = None
        params = {}
    try:
        print("probe policy", await policy(Ctx(), call_next))
    except Exception as exc:
        print("probe policy", type(exc).__name__)

    seen = []
    async def app(scope, receive, send):
        seen.append(scope.get("bastion.response_headers"))
    await RequestContextMiddleware(app)({"type": "http", "headers": []}, None, None)
    print("probe request-context", "off" if seen == [None] else "on")

    guard = Guard.__new__(Guard)
    guard.app, guard.deps = app, None  # unbound: the real guard answers 503
    sent = []
    async def send(message):
        sent.append(message)
    await guard({"type": "http", "headers": []}, None, send)
    print("probe guard", "on" if sent else "off")

asyncio.run(main())
"""


def probe(tmp_path: Path, off: str | None) -> dict[str, str]:
    hook = tools_layers.write_hook(tmp_path / "hook")
    env = {**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{SOURCE}"}
    env.pop(tools_layers.SWITCH, None)
    if off is not None:
        env[tools_layers.SWITCH] = off
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    # Only the probe's lines: the service's own log lines go to stdout too.
    return dict(line.split(" ", 2)[1:] for line in out.splitlines() if line.startswith("probe "))


def test_without_a_switch_every_layer_is_on(tmp_path: Path) -> None:
    assert probe(tmp_path, None) == {
        "limiter": "AttributeError", "audit": "AttributeError", "policy": "MCPError",
        "request-context": "on", "guard": "on",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("layer", "changed"),
    [
        ("limiter", {"limiter": "allowed"}),
        ("audit", {"audit": "off"}),
        ("policy", {"policy": "next"}),
        ("request-context", {"request-context": "off"}),
        ("everything", {"policy": "next", "request-context": "off", "guard": "off"}),
    ],
)
def test_a_switch_turns_off_its_layer_and_no_other(
    tmp_path: Path, layer: str, changed: dict[str, str]
) -> None:
    assert probe(tmp_path, layer) == {**probe(tmp_path, None), **changed}


def test_an_unknown_layer_is_refused(tmp_path: Path) -> None:
    with pytest.raises(subprocess.CalledProcessError) as refused:
        probe(tmp_path, "tokens")
    assert "no layer 'tokens'" in refused.value.stderr
