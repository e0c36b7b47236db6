"""The upstream of bench/gateway.py: the `mcp` SDK's MCPServer with a no-op `echo` tool
(and, with `--tools N`, N more tools with a few typed arguments each), streamable HTTP,
stateless, JSON responses, no security.

    .venv/bin/python bench/gateway_upstream.py PORT [--tools N]
"""

from __future__ import annotations

import argparse

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import ToolAnnotations

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--tools", type=int, default=0)
    args = parser.parse_args()
    mcp = MCPServer(name="bench-upstream", log_level="WARNING")

    @mcp.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def echo(message: str) -> str:
        """Echo a message back."""
        return message

    for i in range(args.tools):

        async def tool(query: str, limit: int = 10, exact: bool = False) -> str:
            return query

        mcp.add_tool(tool, name=f"search_{i:03d}", description=f"Search index {i} for a query")

    app = mcp.streamable_http_app(
        stateless_http=True,
        json_response=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
