"""The upstream of bench/gateway.py: the `mcp` SDK's MCPServer with one no-op tool
(`echo`), streamable HTTP, stateless, JSON responses, no security.

    .venv/bin/python bench/gateway_upstream.py PORT
"""

from __future__ import annotations

import sys

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import ToolAnnotations

if __name__ == "__main__":
    mcp = MCPServer(name="bench-upstream", log_level="WARNING")

    @mcp.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def echo(message: str) -> str:
        """Echo a message back."""
        return message

    app = mcp.streamable_http_app(
        stateless_http=True,
        json_response=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
