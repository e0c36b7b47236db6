"""The whole stack, brought up once per test session with testcontainers.

The stack runs under its own compose project name, with its own generated secrets and
its own host ports, so it never collides with a stack started by `make up` (or with
another developer's test run: set BASTION_IT_PROJECT and BASTION_IT_PORT_BASE).

deploy/compose.test.yaml is added to compose.yaml: access tokens live 60 s (so a refresh
can be seen), and auth may fetch client ID metadata documents from CIMD_HOST, which
resolves to the docker host, over https with the session's throwaway CA (`cimd` fixture).
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from testcontainers.compose import DockerCompose

from tests.integration.tls import DocumentServer, TestCA

if TYPE_CHECKING:
    from tests.integration.audit_api import AuditApi
    from tests.integration.idp import Idp
    from tests.integration.standins import EnterpriseIdp, GitHubStandIn

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SERVICES = ("auth", "keys", "tools", "audit")
COMPOSE_FILES = ("compose.yaml", "compose.test.yaml")
# Where the tests serve client ID metadata documents; auth resolves it to the docker host.
CIMD_HOST = "cimd.bastion.test"
ACCESS_TOKEN_TTL = 60
IDP_PORT_OFFSET = 5  # the test OpenID provider (deploy/test-idp) listens on base + 5
# Stand-ins run by the tests on the docker host (standins.py); auth reaches them by name.
GITHUB_PORT_OFFSET = 6
IDJAG_PORT_OFFSET = 7
STANDIN_HOST = "standin.bastion.test"


@dataclass(frozen=True)
class Stack:
    compose: DockerCompose
    project: str
    env_file: Path
    urls: dict[str, str]
    env: dict[str, str]
    ca: TestCA

    def compose_cmd(self, *args: str) -> list[str]:
        files = [arg for name in COMPOSE_FILES for arg in ("-f", str(DEPLOY / name))]
        return [
            "docker", "compose", "-p", self.project, *files,
            "--env-file", str(self.env_file), *args,
        ]  # fmt: skip

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - fixed argv, no shell
            self.compose_cmd(*args), capture_output=True, text=True, timeout=timeout, check=True
        )

    def exec(self, service: str, *argv: str) -> str:
        return self.run("exec", "-T", service, *argv).stdout

    def logs(self, service: str) -> str:
        return self.run("logs", "--no-color", "--no-log-prefix", service).stdout


def _read_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            env[key] = value
    return env


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    project = os.environ.get("BASTION_IT_PROJECT", "mcp-bastion-it")
    base = int(os.environ.get("BASTION_IT_PORT_BASE", "18000"))
    ports = {name: base + i for i, name in enumerate(SERVICES, start=1)}
    env_file = tmp_path_factory.mktemp("stack") / "it.env"
    ca = TestCA(tmp_path_factory.mktemp("tls"), [CIMD_HOST])
    subprocess.run(["bash", str(DEPLOY / "gen-env.sh"), str(env_file)], check=True)  # noqa: S603
    with env_file.open("a") as fh:
        for name, port in ports.items():
            fh.write(f"{name.upper()}_PORT={port}\n")
        fh.write(f"IMAGE_TAG={project}\n")
        fh.write(f"REDIS_PASSWORD_INSPECTOR={secrets.token_urlsafe(48)}\n")
        # A short refresh grace window, so the reuse attack needs no long sleep.
        fh.write("AUTH_REFRESH_GRACE_SECONDS=1\n")
        fh.write(f"AUTH_ACCESS_TOKEN_TTL={ACCESS_TOKEN_TTL}\n")
        fh.write(f"CIMD_HOST={CIMD_HOST}\nCIMD_CA_FILE={ca.ca_file}\n")
        fh.write(f"BASE_IMAGE={os.environ.get('BASE_IMAGE', 'python:3.11-slim-bookworm')}\n")
        idp_port = base + IDP_PORT_OFFSET
        fh.write(f"IDP_PORT={idp_port}\nIDP_ISSUER=http://idp.bastion.test:{idp_port}\n")
        fh.write(f"IDP_CLIENT_SECRET={secrets.token_urlsafe(32)}\n")
        fh.write(f"STANDIN_HOST={STANDIN_HOST}\nGITHUB_PORT={base + GITHUB_PORT_OFFSET}\n")
        fh.write(f"IDJAG_PORT={base + IDJAG_PORT_OFFSET}\n")
        fh.write(f"GITHUB_CLIENT_SECRET={secrets.token_urlsafe(32)}\n")
        fh.write(f"IDJAG_CLIENT_SECRET={secrets.token_urlsafe(32)}\n")
        # The gateway's upstreams (test_gateway.py): the credential tools sends each one,
        # and a JWT-shaped value in everything's environment for get-env to leak.
        fh.write(f"EVERYTHING_TOKEN=ev-{secrets.token_urlsafe(24)}\n")
        time_key = tmp_path_factory.mktemp("upstreams") / "time-key"
        time_key.write_text(f"tk-{secrets.token_urlsafe(24)}\n")
        time_key.chmod(0o644)  # read by the tools container's user
        fh.write(f"TIME_KEY_FILE={time_key}\n")
        fake = "eyJhbGciOiJFUzI1NiJ9." + secrets.token_urlsafe(24) + "." + secrets.token_urlsafe(32)
        fh.write(f"UPSTREAM_FAKE_JWT={fake}\n")
    os.environ["COMPOSE_PROJECT_NAME"] = project
    compose = DockerCompose(
        DEPLOY,
        compose_file_name=list(COMPOSE_FILES),
        env_file=str(env_file),
        build=True,
        wait=True,
    )
    urls = {name: f"http://localhost:{port}" for name, port in ports.items()}
    stack = Stack(compose, project, env_file, urls, _read_env(env_file), ca)
    # A stack left behind by an interrupted run would hold the ports: start clean.
    subprocess.run(stack.compose_cmd("down", "--volumes"), capture_output=True, check=False)  # noqa: S603
    compose.start()
    try:
        yield stack
    finally:
        compose.stop()


@pytest.fixture(scope="session")
def cimd(stack: Stack) -> Iterator[DocumentServer]:
    """An https server on every host interface (auth reaches it through the docker host
    gateway as CIMD_HOST), with a certificate from the stack's throwaway CA."""
    server = DocumentServer(stack.ca, host="0.0.0.0")  # noqa: S104 - containers must reach it
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def audit(stack: Stack) -> AuditApi:
    """GET /v1/events of the stack's audit service, as the bootstrap admin."""
    from tests.integration.audit_api import AuditApi

    return AuditApi(stack)


@pytest.fixture(scope="session")
def idp(stack: Stack) -> Idp:
    """The stack's OpenID provider (oidc-provider): discovery, set_groups, sign_in."""
    from tests.integration.idp import Idp

    return Idp(
        int(stack.env["IDP_PORT"]),
        stack.env["IDP_CLIENT_SECRET"],
        f"{stack.urls['auth']}/federated/callback",
    )


@pytest.fixture(scope="session")
def github(stack: Stack) -> Iterator[GitHubStandIn]:
    """GitHub's endpoints (standins.py) on every host interface at GITHUB_PORT: auth reaches
    them as STANDIN_HOST, the test's browser opens the authorize page on localhost."""
    from tests.integration.standins import GitHubStandIn

    server = GitHubStandIn(
        "Iv1.bastion-it",
        stack.env["GITHUB_CLIENT_SECRET"],
        f"{stack.urls['auth']}/federated/callback",
        host="0.0.0.0",  # noqa: S104 - containers must reach it
        port=int(stack.env["GITHUB_PORT"]),
    )
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def enterprise_idp(stack: Stack) -> Iterator[EnterpriseIdp]:
    """The enterprise IdP that signs ID-JAGs; its JWKS on every host interface at IDJAG_PORT."""
    from tests.integration.standins import EnterpriseIdp

    server = EnterpriseIdp(
        "https://idp.acme.bastion.test",
        host="0.0.0.0",  # noqa: S104 - containers must reach it
        port=int(stack.env["IDJAG_PORT"]),
    )
    try:
        yield server
    finally:
        server.close()
