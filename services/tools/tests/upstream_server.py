"""A real upstream MCP server for the gateway tests: the SDK's low-level `Server` over
streamable HTTP, served by uvicorn in a thread on a local port. A test can change its
tools (definitions and behaviour), stop and restart it, and read every HTTP request it
received (headers and JSON body), to prove what the gateway sent and what it never sent.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import uvicorn
from mcp.server.lowlevel import Server
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import CallToolResult, ListToolsResult, TextContent, Tool, ToolAnnotations
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["FAKE_AWS", "FAKE_JWT", "TestUpstream"]

Handler = Callable[[dict[str, Any]], Awaitable[CallToolResult]]
FAKE_AWS = "AKIAIOSFODNN7EXAMPLE"
FAKE_JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1cHN0cmVhbS11c2VyIn0.c2lnbmF0dXJlLXBhcnQ"
READ = ToolAnnotations(read_only_hint=True)


def _text(value: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=value)])


class TestUpstream:
    __test__ = False  # not a test class

    def __init__(self, port: int) -> None:
        self.port = port
        self.requests: list[dict[str, Any]] = []
        self.tools: dict[str, Tool] = {}
        self.handlers: dict[str, Handler] = {}
        # When set, every tools/call is answered with this raw HTTP answer (status,
        # content type, body) instead of MCP: a broken or impostor upstream.
        self.garbage: tuple[int, str, bytes] | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._default_tools()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def _default_tools(self) -> None:
        obj = {"type": "object", "additionalProperties": False}

        async def echo(args: dict[str, Any]) -> CallToolResult:
            return _text(f"echo: {args['message']}")

        async def add(args: dict[str, Any]) -> CallToolResult:
            total = args["a"] + args["b"]
            return CallToolResult(content=[TextContent(type="text", text=str(total))],
                                  structured_content={"sum": total})  # fmt: skip

        async def leak(args: dict[str, Any]) -> CallToolResult:
            return CallToolResult(
                content=[TextContent(type="text", text=f"token={FAKE_JWT} aws={FAKE_AWS}")],
                structured_content={"env": {"TOKEN": FAKE_JWT, "HOME": "/home/up"}},
                _meta={"trace": f"sent with Bearer {FAKE_JWT}"},
            )

        async def bad_shape(args: dict[str, Any]) -> CallToolResult:
            return CallToolResult(content=[], structured_content={"sum": "not a number"})

        async def slow(args: dict[str, Any]) -> CallToolResult:
            await anyio.sleep(args["seconds"])
            return _text("slept")

        async def write(args: dict[str, Any]) -> CallToolResult:
            return _text(f"wrote {args['text']}")

        async def danger(args: dict[str, Any]) -> CallToolResult:
            return _text("boom")

        sum_schema = {"type": "object", "properties": {"sum": {"type": "integer"}},
                      "required": ["sum"]}  # fmt: skip
        self.add_tool("echo", "Echo a message back",
                      {**obj, "properties": {"message": {"type": "string", "maxLength": 100}},
                       "required": ["message"]}, echo, READ)  # fmt: skip
        self.add_tool("add", "Add two integers",
                      {**obj, "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a", "b"]}, add, READ, output=sum_schema)  # fmt: skip
        self.add_tool("leak", "Show the environment", {**obj}, leak, READ)
        self.add_tool("bad_shape", "Add badly", {**obj}, bad_shape, READ, output=sum_schema)
        self.add_tool("slow", "Sleep", {**obj, "properties": {"seconds": {"type": "number"}},
                                        "required": ["seconds"]}, slow, READ)  # fmt: skip
        self.add_tool("write", "Write text",
                      {**obj, "properties": {"text": {"type": "string"}}, "required": ["text"]},
                      write, ToolAnnotations(read_only_hint=False))  # fmt: skip
        self.add_tool("danger", "Delete everything", {**obj}, danger, None)

    def add_tool(
        self,
        name: str,
        description: str,
        schema: dict[str, Any],
        handler: Handler,
        annotations: ToolAnnotations | None,
        *,
        output: dict[str, Any] | None = None,
    ) -> None:
        self.tools[name] = Tool(name=name, description=description, input_schema=schema,
                                output_schema=output, annotations=annotations)  # fmt: skip
        self.handlers[name] = handler

    def calls(self, tool: str | None = None) -> list[dict[str, Any]]:
        """The tools/call requests received (for `tool` only, when given)."""
        out = []
        for request in self.requests:
            body = request["body"]
            if isinstance(body, dict) and body.get("method") == "tools/call":
                if tool is None or body.get("params", {}).get("name") == tool:
                    out.append(body)
        return out

    def _app(self) -> ASGIApp:
        async def list_tools(ctx: Any, params: Any) -> ListToolsResult:
            return ListToolsResult(tools=list(self.tools.values()))

        async def call_tool(ctx: Any, params: Any) -> CallToolResult:
            return await self.handlers[params.name](params.arguments or {})

        server: Server[Any] = Server("test-upstream", on_list_tools=list_tools,
                                     on_call_tool=call_tool)  # fmt: skip
        app = server.streamable_http_app(
            json_response=True,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        return self._recorder(app)

    def _recorder(self, app: ASGIApp) -> ASGIApp:
        async def record(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            chunks = []
            more = True
            while more:
                message = await receive()
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            raw = b"".join(chunks)
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode("utf-8", "replace")
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            self.requests.append({"method": scope["method"], "headers": headers, "body": body})
            if self.garbage is not None and isinstance(body, dict):
                if body.get("method") == "tools/call":
                    status, content_type, answer = self.garbage
                    await send({"type": "http.response.start", "status": status,
                                "headers": [(b"content-type", content_type.encode())]})  # fmt: skip
                    await send({"type": "http.response.body", "body": answer})
                    return
            sent = False

            async def replay() -> Message:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": raw, "more_body": False}
                return await receive()

            await app(scope, replay, send)

        return record

    def start(self) -> None:
        config = uvicorn.Config(
            self._app(), host="127.0.0.1", port=self.port, log_level="critical",
            timeout_graceful_shutdown=1,
        )  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("test upstream did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server, self._thread = None, None
