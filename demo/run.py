"""`make demo`: the whole platform, role by role, against a stack started by `make up`.

Creates one demo user per role, runs the real flows for each (login + consent through
auth, tool calls through tools), shows what is allowed and refused, a rate-limit
refusal, a revocation taking effect, an API key used by a machine client, and ends with
the security report from audit.

The stack's credentials and host ports come from its env file (`make up` writes
deploy/.env; `--env-file` names another, e.g. the integration tests' stack); a `*_PORT`
variable in the environment wins over the file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
from pathlib import Path
from typing import Any

import httpx2
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from tests.integration.mcp_http import McpHttp
from tests.integration.oauth import OAuthClient

ROOT = Path(__file__).resolve().parents[1]
console = Console()

TOOL_CALLS: dict[str, dict[str, Any]] = {
    "get_weather": {"city": "Paris"},
    "report_weather": {"city": "Paris", "temperature_c": 14.5, "condition": "cloudy"},
    "list_files": {"directory": "."},
    "write_file": {"path": "demo.txt", "content": "written by the demo"},
    "read_file": {"path": "demo.txt"},
    "delete_file": {"path": "demo.txt"},
    "list_users": {},
    "get_security_audit": {"time_range": "1h"},
}


def env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values[key] = value
    return values


def urls(env: dict[str, str]) -> dict[str, str]:
    out = {}
    for name, port in (("auth", 8001), ("keys", 8002), ("tools", 8003), ("audit", 8004)):
        variable = f"{name.upper()}_PORT"
        out[name] = f"http://localhost:{os.environ.get(variable, env.get(variable, port))}"
    return out


def outcome(reply: Any) -> tuple[str, str]:
    if reply.status == 200 and reply.error is None:
        result = reply.result
        if result.get("isError"):
            text = result.get("content", [{}])[0].get("text", "")
            return "[yellow]tool error[/]", text[:60]
        return "[green]allowed[/]", ""
    if reply.status == 200:
        return "[yellow]rejected[/]", str(reply.error.get("message", ""))[:60]
    reason = reply.headers.get("www-authenticate", "") or str(reply.status)
    return f"[red]refused {reply.status}[/]", reason[:60]


async def main(env_path: Path) -> None:
    env = env_file(env_path)
    u = urls(env)
    admin = (env["BOOTSTRAP_ADMIN_USERNAME"], env["BOOTSTRAP_ADMIN_PASSWORD"])
    tools_uri = f"{u['tools']}/mcp"
    console.print(Panel.fit("MCP Bastion demo", style="bold"))

    client = await OAuthClient.register(u["auth"], "bastion-demo")
    admin_api = await client.token(*admin, resource=f"{u['auth']}/admin", scope="admin:users")
    users: dict[str, tuple[str, str]] = {}
    async with httpx2.AsyncClient(timeout=15) as http:
        for role in ("guest", "user", "premium"):
            name, password = f"demo-{role}-{secrets.token_hex(2)}", secrets.token_urlsafe(16)
            response = await http.post(
                f"{u['auth']}/admin/users",
                json={"username": name, "password": password, "roles": [role]},
                headers={"Authorization": f"Bearer {admin_api['access_token']}"},
            )
            response.raise_for_status()
            users[role] = (name, password)
    console.print(f"Created demo users: {', '.join(n for n, _ in users.values())}")
    users["admin"] = admin  # the last row: its delete_file cleans up after the others

    # The admin puts demo.txt in the sandbox first, so that a role that may read files
    # but not write them (user) reads a file that exists: every allowed call succeeds.
    seed = await client.token(*admin, resource=tools_uri, scope="files:write")
    mcp = McpHttp(tools_uri, seed["access_token"])
    async with httpx2.AsyncClient(timeout=15) as http:
        await mcp.initialize(http)
        await mcp.call_tool(http, "write_file", TOOL_CALLS["write_file"])

    table = Table(title="Every role, every tool (login + consent through auth, then tools)")
    table.add_column("role")
    for tool in TOOL_CALLS:
        table.add_column(tool, overflow="fold")
    # Ask for every scope the tools server offers (its RFC 9728 metadata: the policy
    # file's permissions); auth cuts the token to what the role holds.
    async with httpx2.AsyncClient(timeout=15) as http:
        prm = await http.get(f"{u['tools']}/.well-known/oauth-protected-resource/mcp")
        offered = " ".join(prm.json()["scopes_supported"])
    tokens: dict[str, dict[str, Any]] = {}
    for role, creds in users.items():
        tokens[role] = await client.token(*creds, resource=tools_uri, scope=offered)
        mcp = McpHttp(tools_uri, tokens[role]["access_token"])
        row = [role]
        async with httpx2.AsyncClient(timeout=15) as http:
            await mcp.initialize(http)
            for tool, args in TOOL_CALLS.items():
                row.append(outcome(await mcp.call_tool(http, tool, args))[0])
        table.add_row(*row)
    console.print(table)
    for role in users:
        console.print(f"  {role}: token scopes [dim]{tokens[role]['scope']}[/]")

    console.print(Panel.fit("Gateway: mcp-server-time (PyPI) behind Bastion, as the user"))
    mcp = McpHttp(tools_uri, tokens["user"]["access_token"])
    async with httpx2.AsyncClient(timeout=15) as http:
        await mcp.initialize(http)
        names = [tool["name"] for tool in (await mcp.list_tools(http)).result["tools"]]
        upstream = sorted(name for name in names if name not in TOOL_CALLS)
        # One line however many upstreams the stack has (the test stack has five).
        console.print(f"upstream tools listed: {', '.join(upstream) or 'none'}", soft_wrap=True)
        if "time_get_current_time" in upstream:
            reply = await mcp.call_tool(http, "time_get_current_time", {"timezone": "Asia/Tokyo"})
            shown = (reply.result.get("structuredContent") or {}) if reply.error is None else {}
            console.print(
                f"gateway: time_get_current_time {outcome(reply)[0]}"
                f" ({shown.get('datetime', '-')} in Tokyo)"
            )
            bad = await mcp.call_tool(http, "time_get_current_time", {"timezone": 5})
            console.print(
                f"gateway: bad arguments {outcome(bad)[0]} {outcome(bad)[1]}"
                " (checked against the pinned schema; never sent upstream)"
            )

    if "fs_list_allowed_directories" in upstream:
        console.print(Panel.fit("Gateway, a local server: the filesystem server, one process each"))
        for role in ("user", "premium"):
            mcp = McpHttp(tools_uri, tokens[role]["access_token"])
            async with httpx2.AsyncClient(timeout=30) as http:
                await mcp.initialize(http)
                reply = await mcp.call_tool(http, "fs_list_allowed_directories", {})
            text = (reply.result or {}).get("content", [{}])[0].get("text", "-") or "-"
            console.print(
                f"gateway (stdio): {role} fs_list_allowed_directories {outcome(reply)[0]}"
                f" ({text.split()[-1]})"
            )

    console.print(Panel.fit("Rate limit: the guest calls get_weather until refused"))
    mcp = McpHttp(tools_uri, tokens["guest"]["access_token"])
    async with httpx2.AsyncClient(timeout=15) as http:
        await mcp.initialize(http)
        for n in range(1, 500):
            reply = await mcp.call_tool(http, "get_weather", {"city": "Paris"})
            if reply.status == 429:
                console.print(
                    f"call {n}: [red]429[/] Retry-After={reply.headers.get('retry-after')} s,"
                    f" RateLimit-Policy: {reply.headers.get('ratelimit-policy')},"
                    f" RateLimit: {reply.headers.get('ratelimit')}"
                )
                break

    console.print(Panel.fit("Revocation: the user's token is revoked, then used again"))
    response = httpx2.post(
        f"{u['auth']}/revoke",
        data={"token": tokens["user"]["access_token"], "client_id": client.client_id},
    )
    console.print(f"revoke -> {response.status_code}")
    await asyncio.sleep(1)
    mcp = McpHttp(tools_uri, tokens["user"]["access_token"])
    async with httpx2.AsyncClient(timeout=15) as http:
        reply = await mcp.initialize(http)
    console.print(f"call after revocation -> [red]{reply.status}[/] {outcome(reply)[1]}")

    console.print(Panel.fit("Machine client: an API key, exchanged and used directly"))
    keys_token = await client.token(
        *users["premium"], resource=u["keys"], scope="weather:read weather:write"
    )
    async with httpx2.AsyncClient(timeout=15) as http:
        created = await http.post(
            f"{u['keys']}/v1/keys",
            json={"name": "demo-ci", "permissions": ["weather:read"], "expires_in_days": 1},
            headers={"Authorization": f"Bearer {keys_token['access_token']}"},
        )
        created.raise_for_status()
        key = created.json()
        console.print(f"created key {key['key_id']} (shown once, expires {key['expires_at']})")
        exchanged = await http.post(
            f"{u['keys']}/token",
            data={
                "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                "subject_token": key["api_key"],
                "subject_token_type": "urn:mcp-secure:api-key",
                "resource": tools_uri,
            },
        )
        exchanged.raise_for_status()
        for label, bearer in (
            ("exchanged token", exchanged.json()["access_token"]),
            ("key as bearer", key["api_key"]),
        ):
            mcp = McpHttp(tools_uri, bearer)
            await mcp.initialize(http)
            allowed = outcome(await mcp.call_tool(http, "get_weather", {"city": "Paris"}))[0]
            refused = outcome(
                await mcp.call_tool(http, "report_weather", TOOL_CALLS["report_weather"])
            )[0]
            console.print(f"{label}: get_weather {allowed}, report_weather {refused}")

    console.print(Panel.fit("Brute force: wrong passwords for the guest account"))
    refused = 0
    for _ in range(12):
        try:
            await client.login(
                users["guest"][0], "wrong-" + secrets.token_hex(4),
                resource=tools_uri, scope="weather:read",
            )  # fmt: skip
        except AssertionError:
            refused += 1
    console.print(f"{refused} of 12 logins refused; the account is now locked for a while")
    await asyncio.sleep(2)  # let the collector store the last events

    console.print(Panel.fit("Security report (audit, last hour)"))
    audit_token = await client.token(*admin, resource=u["audit"], scope="metrics:view")
    async with httpx2.AsyncClient(timeout=15) as http:
        report = (
            await http.get(
                f"{u['audit']}/v1/report",
                params={"range": "1h"},
                headers={"Authorization": f"Bearer {audit_token['access_token']}"},
            )
        ).json()
    counts = Table(title="Counts")
    counts.add_column("what")
    counts.add_column("count", justify="right")
    for name, value in report.get("counts", {}).items():
        counts.add_row(name, str(value))
    console.print(counts)
    alerts = Table(title="Alerts")
    alerts.add_column("rule")
    alerts.add_column("subject")
    alerts.add_column("evidence", overflow="fold")
    for alert in report.get("alerts", []):
        alerts.add_row(
            alert.get("rule", ""),
            str(alert.get("principal") or alert.get("ip") or alert.get("token_id") or ""),
            str(alert.get("evidence", ""))[:120],
        )
    console.print(alerts)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--env-file", type=Path, default=ROOT / "deploy/.env",
        help="the stack's env file (default: deploy/.env, written by make up)",
    )  # fmt: skip
    asyncio.run(main(parser.parse_args().env_file))
