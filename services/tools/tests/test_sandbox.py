"""The sandbox: a corpus of hostile paths (traversal, encodings, Unicode look-alikes,
symlink escapes, devices, hard links) is refused through the MCP tools and by the
sandbox itself, nothing outside the root is read, written or deleted."""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx2
import pytest
from services.tools.tests.helpers import Minter, call_tool, open_session, serve, wait_for_event

from bastion_tools.app import create_app
from bastion_tools.settings import Settings
from bastion_tools.tools.sandbox import Sandbox, SandboxError
from bastion_tools.upstream import UpstreamError

pytestmark = pytest.mark.anyio

SECRET = "TOP-SECRET-OUTSIDE-THE-ROOT"
ALL_FILES = "files:read files:write files:delete"

LEXICAL = [
    "../etc/passwd",
    "/etc/passwd",
    "../secret.txt",
    "..%2f..%2fetc%2fpasswd.txt",
    "%2e%2e/%2e%2e/etc/passwd.txt",
    "%252e%252e%252fsecret.txt",
    "..%c0%af..%c0%afsecret.txt",
    "a/../../secret.txt",
    "./../secret.txt",
    "a/./../../secret.txt",
    "x.txt/..",
    "....//....//secret.txt",
    "x.txt\x00.md",
    "secret.txt\x00",
    "\u2025/\u2025/etc/passwd.txt",
    "\uff0e\uff0e/\uff0e\uff0e/secret.txt",
    "\uff0e\uff0e\uff0fsecret.txt",
    "..\u2215secret.txt",
    "..\\..\\x.txt",
    "C:\\Windows\\win.ini.txt",
    "C:/Windows/win.txt",
    "//etc/passwd.txt",
    "\\\\server\\share\\x.txt",
    "file:///etc/passwd.txt",
    "~/.ssh/id_rsa.txt",
    ".ssh/authorized_keys.txt",
    ".hidden.txt",
    "a\nb.txt",
    "x.txt\r",
    "e\u0301.txt",
    "passwd",
    "notes.txt.sh",
    "a" * 300 + ".txt",
    "/".join(["d"] * 10) + "/x.txt",
    "",
]
ON_DISK = ["escape/secret.txt", "link.txt", "inner/up/outside/secret.txt", "fifo.txt",
           "zero.txt", "hard.txt", "bigdir"]  # fmt: skip


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """The sandbox with symlinks, a FIFO and a hard link planted by someone with shell access."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    root = tmp_path / "sandbox"
    (root / "inner").mkdir(parents=True)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "link.txt").symlink_to(outside / "secret.txt")
    (root / "inner" / "up").symlink_to("../..", target_is_directory=True)
    (root / "zero.txt").symlink_to("/dev/zero")
    os.mkfifo(root / "fifo.txt")
    os.link(outside / "secret.txt", root / "hard.txt")
    (root / "bigdir").mkdir()
    (root / "ok.txt").write_text("fine")
    return root


def test_the_corpus_is_large_enough() -> None:
    assert len(LEXICAL) + len(ON_DISK) >= 30


@pytest.mark.parametrize("path", LEXICAL + ON_DISK)
def test_the_sandbox_refuses_every_hostile_path(layout: Path, path: str) -> None:
    sandbox = Sandbox(layout, extensions=[".txt", ".md", ".json", ".csv"], max_bytes=1024)
    with pytest.raises(SandboxError):
        sandbox.read(path)
    if path != "hard.txt":  # writing or deleting replaces the link itself: harmless
        with pytest.raises(SandboxError):
            sandbox.write(path, "overwritten")
        with pytest.raises(SandboxError):
            sandbox.delete(path)
    outside = layout.parent / "outside" / "secret.txt"
    assert outside.read_text() == SECRET
    assert not any(p.name.startswith(".tmp-") for p in layout.rglob("*"))


@pytest.mark.parametrize("path", LEXICAL + ON_DISK)
async def test_read_file_refuses_every_hostile_path_over_mcp(
    layout: Path, tools: httpx2.AsyncClient, minter: Minter, path: str
) -> None:
    token = minter.token(roles=["admin"], scope=ALL_FILES)
    session = await open_session(tools, token)
    reply = await call_tool(tools, token, session, "read_file", {"path": path})
    assert reply.status_code == 200
    body = reply.json()
    refused = "error" in body or body["result"].get("isError") is True
    assert refused, body
    assert SECRET not in json.dumps(body)
    if "error" in body:
        assert body["error"]["code"] == -32602
        assert "path" in body["error"]["message"]


async def test_write_and_delete_refuse_symlink_escapes_over_mcp(
    layout: Path, tools: httpx2.AsyncClient, minter: Minter, redis_url: str
) -> None:
    token = minter.token(sub="frank", roles=["admin"], scope=ALL_FILES)
    session = await open_session(tools, token)
    for tool, arguments in [
        ("write_file", {"path": "escape/secret.txt", "content": "pwned"}),
        ("write_file", {"path": "link.txt", "content": "pwned"}),
        ("delete_file", {"path": "escape/secret.txt"}),
        ("delete_file", {"path": "link.txt"}),
    ]:
        body = (await call_tool(tools, token, session, tool, arguments)).json()
        assert body["result"]["isError"] is True, body
    assert (layout.parent / "outside" / "secret.txt").read_text() == SECRET
    assert (layout / "link.txt").is_symlink()
    event = await wait_for_event(redis_url, "tool.called", principal="frank", tool="write_file")
    assert event.outcome == "error"
    assert event.details["arguments"]["content"] == "[redacted]"


async def test_files_round_trip_inside_the_root_atomically(
    layout: Path, tools: httpx2.AsyncClient, minter: Minter
) -> None:
    token = minter.token(roles=["admin"], scope=ALL_FILES)
    session = await open_session(tools, token)

    async def call(tool: str, **arguments: str) -> dict[str, object]:
        body = (await call_tool(tools, token, session, tool, arguments)).json()
        assert "result" in body and not body["result"].get("isError"), body
        structured: dict[str, object] = body["result"]["structuredContent"]
        return structured

    await call("write_file", path="notes/today.md", content="# hello\n")
    assert (layout / "notes" / "today.md").read_text() == "# hello\n"
    await call("write_file", path="notes/today.md", content="# replaced\n")
    assert (await call("read_file", path="notes/today.md"))["content"] == "# replaced\n"
    listing = await call("list_files", directory="notes")
    assert listing["entries"] == [{"name": "today.md", "type": "file", "size": 11}]
    root = await call("list_files", directory=".")
    names = {e["name"] for e in root["entries"]}  # type: ignore[attr-defined]
    assert "ok.txt" in names and "link.txt" not in names and "fifo.txt" not in names
    await call("delete_file", path="notes/today.md")
    assert not (layout / "notes" / "today.md").exists()
    assert not any(p.name.startswith(".tmp-") for p in layout.rglob("*"))


async def test_content_over_one_mebibyte_is_invalid_and_nothing_is_written(
    layout: Path, tools: httpx2.AsyncClient, minter: Minter, redis_url: str
) -> None:
    token = minter.token(sub="gina", roles=["admin"], scope=ALL_FILES)
    session = await open_session(tools, token)
    big = "é" * (600 * 1024)  # 600 Ki characters, 1.2 MiB of UTF-8
    body = (await call_tool(tools, token, session, "write_file",
                            {"path": "big.txt", "content": big})).json()  # fmt: skip
    assert body["error"]["code"] == -32602
    assert "content" in body["error"]["message"]
    assert "é" not in body["error"]["message"]
    assert not (layout / "big.txt").exists()
    event = await wait_for_event(redis_url, "tool.invalid_params", principal="gina")
    assert event.details["fields"] == ["content"]
    assert event.details["arguments"]["content"] == "[redacted]"
    (layout / "huge.txt").write_bytes(b"x" * (1024 * 1024 + 1))
    read = (await call_tool(tools, token, session, "read_file", {"path": "huge.txt"})).json()
    assert read["result"]["isError"] is True
    assert "larger" in read["result"]["content"][0]["text"]


@pytest.mark.anyio
@pytest.mark.parametrize("error", [SandboxError("refused"), UpstreamError("auth is down", 503)])
async def test_a_tool_error_through_a_context_manager_stays_itself(error: Exception) -> None:
    """A frozen dataclass exception turns into FrozenInstanceError when contextlib sets
    its __traceback__ on the way out of an async context manager."""

    @contextlib.asynccontextmanager
    async def scope() -> AsyncIterator[None]:
        yield

    with pytest.raises(type(error)) as caught:
        async with scope():
            raise error
    assert caught.value is error


def test_writes_over_the_quota_are_refused_and_leave_nothing_behind(tmp_path: Path) -> None:
    root = tmp_path / "quota"
    sandbox = Sandbox(root, extensions=[".txt"], max_bytes=1024, quota_bytes=2500)
    sandbox.ensure_root()
    sandbox.write("a.txt", "x" * 1000)
    sandbox.write("b.txt", "x" * 1000)
    with pytest.raises(SandboxError, match="the sandbox is full: .* quota of 2500 bytes"):
        sandbox.write("deep/er/c.txt", "x" * 600)
    assert sorted(p.name for p in root.rglob("*")) == ["a.txt", "b.txt"]  # no dir, no temp
    sandbox.write("a.txt", "x" * 1000)  # replacing a file counts only the difference
    sandbox.write("c.txt", "x" * 500)
    assert sandbox.used_bytes() == 2500
    sandbox.delete("b.txt")  # deleting makes room again
    sandbox.write("deep/er/d.txt", "x" * 900)
    assert (root / "deep" / "er" / "d.txt").stat().st_size == 900


def test_a_failed_write_removes_the_directories_it_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "dirs"
    sandbox = Sandbox(root, extensions=[".txt"], max_bytes=1024)
    sandbox.ensure_root()
    (root / "keep").mkdir()

    def disk_full(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)  # the write fails after the dirs exist
    with pytest.raises(SandboxError, match="no space left in the sandbox"):
        sandbox.write("keep/fresh/sub/x.txt", "hi")
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == ["keep"]


def test_temporary_files_of_interrupted_writes_are_removed_at_start(tmp_path: Path) -> None:
    root = tmp_path / "crashed"
    (root / "notes").mkdir(parents=True)
    (root / "notes" / ".tmp-0123456789abcdef").write_text("half a write")
    (root / ".tmp-fedcba9876543210").write_text("another")
    (root / "notes" / "kept.txt").write_text("kept")
    Sandbox(root, extensions=[".txt"], max_bytes=1024).ensure_root()
    assert sorted(p.name for p in root.rglob("*")) == ["kept.txt", "notes"]


async def test_the_write_file_tool_answers_a_full_sandbox_with_a_clear_error(
    make_settings: Callable[..., Settings], minter: Minter, tmp_path: Path
) -> None:
    settings = make_settings(sandbox_quota_bytes=1000)
    async with serve(create_app(settings)) as tools:
        token = minter.token(roles=["admin"], scope=ALL_FILES)
        session = await open_session(tools, token)
        ok = await call_tool(tools, token, session, "write_file",
                             {"path": "a.txt", "content": "x" * 900})  # fmt: skip
        assert ok.json()["result"].get("isError") is not True
        full = (await call_tool(tools, token, session, "write_file",
                                {"path": "new/b.txt", "content": "x" * 200})).json()  # fmt: skip
        assert full["result"]["isError"] is True
        assert "the sandbox is full" in full["result"]["content"][0]["text"]
    assert not (Path(settings.sandbox_root) / "new").exists()
