"""Raw MCP over streamable HTTP, for tests that must see HTTP statuses and headers.

The SDK client hides the 401/403/429 responses that the security tests assert on, so
this speaks JSON-RPC directly: the initialize handshake, then requests, reading either
a JSON body or an SSE stream.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import httpx2

PROTOCOL_VERSION = "2025-06-18"


@dataclass
class RpcReply:
    status: int
    headers: httpx2.Headers
    body: dict[str, Any] | None

    @property
    def result(self) -> dict[str, Any]:
        assert self.body is not None and "result" in self.body, self.body
        result: dict[str, Any] = self.body["result"]
        return result

    @property
    def error(self) -> dict[str, Any] | None:
        return None if self.body is None else self.body.get("error")


def _parse(response: httpx2.Response) -> dict[str, Any] | None:
    ctype = response.headers.get("content-type", "")
    if "text/event-stream" in ctype:
        for line in response.text.splitlines():
            if line.startswith("data:"):
                data = line[5:].strip()
                if data:
                    parsed: dict[str, Any] = json.loads(data)
                    if "id" in parsed:
                        return parsed
        return None
    if "application/json" in ctype and response.content:
        body: dict[str, Any] = response.json()
        return body
    return None


@dataclass
class McpHttp:
    url: str
    token: str | None
    headers: dict[str, str] = field(default_factory=dict)
    session_id: str | None = None
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def _headers(self) -> dict[str, str]:
        h = {
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "MCP-Protocol-Version": PROTOCOL_VERSION,
            **self.headers,
        }
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        if self.session_id:
            h["Mcp-Session-Id"] = self.session_id
        return h

    async def post(self, http: httpx2.AsyncClient, payload: dict[str, Any]) -> RpcReply:
        response = await http.post(self.url, json=payload, headers=self._headers())
        return RpcReply(response.status_code, response.headers, _parse(response))

    async def request(
        self, http: httpx2.AsyncClient, method: str, params: dict[str, Any] | None = None
    ) -> RpcReply:
        payload: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self._ids), "method": method}
        if params is not None:
            payload["params"] = params
        return await self.post(http, payload)

    async def initialize(self, http: httpx2.AsyncClient) -> RpcReply:
        reply = await self.request(
            http,
            "initialize",
            {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "bastion-it", "version": "1"},
            },
        )
        if reply.status == 200:
            self.session_id = reply.headers.get("mcp-session-id")
            await http.post(
                self.url,
                json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                headers=self._headers(),
            )
        return reply

    async def call_tool(
        self, http: httpx2.AsyncClient, name: str, arguments: dict[str, Any]
    ) -> RpcReply:
        return await self.request(http, "tools/call", {"name": name, "arguments": arguments})

    async def list_tools(self, http: httpx2.AsyncClient) -> RpcReply:
        return await self.request(http, "tools/list", {})
