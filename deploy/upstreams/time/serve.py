"""PyPI's mcp-server-time over streamable HTTP: the example upstream of `make up` and an
upstream of the integration tests.

mcp-server-time speaks only stdio; this serves the very server it builds
(`mcp_server_time.server.create_server`) with the same SDK's own streamable HTTP app, so
the tools, schemas and answers are the package's. With RECORD_REQUESTS=1 (the test stack
only: it prints request headers, credentials included) a recorder in front prints each
request it receives (method, path, headers, JSON-RPC method and tool name) as a JSON
line, so a test can prove what the gateway sent and what it never sent. While the file
/tmp/garbage exists (the fault suite creates it) the recorder answers every tools/call with
an HTML page instead of MCP: an upstream behind a captive proxy, or an impostor.
"""

import json
import os
import sys
from pathlib import Path

import uvicorn
from mcp.server.transport_security import TransportSecuritySettings
from mcp_server_time.server import create_server


def recorder(app):
    async def record(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            rpc = json.loads(body) if body else None
        except ValueError:
            rpc = None
        params = rpc.get("params") if isinstance(rpc, dict) else None
        line = {
            "record": "http",
            "method": scope["method"],
            "url": scope["path"],
            "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
            "rpc": rpc.get("method") if isinstance(rpc, dict) else None,
            "name": params.get("name") if isinstance(params, dict) else None,
        }
        print(json.dumps(line), flush=True)
        if line["rpc"] == "tools/call" and Path("/tmp/garbage").exists():  # noqa: S108
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/html")],
                }
            )
            await send({"type": "http.response.body", "body": b"<html>Sign in</html>"})
            return None
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await app(scope, replay, send)

    return record


def main() -> None:
    server = create_server(os.environ.get("LOCAL_TIMEZONE", "UTC"))
    app = server.streamable_http_app(
        streamable_http_path="/mcp",
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    port = int(os.environ.get("PORT", "3002"))
    print(json.dumps({"record": "start", "port": port}), file=sys.stderr, flush=True)
    served = recorder(app) if os.environ.get("RECORD_REQUESTS") == "1" else app
    uvicorn.run(served, host="0.0.0.0", port=port, log_level="warning")  # noqa: S104


if __name__ == "__main__":
    main()
