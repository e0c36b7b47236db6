"""The policy file: which MCP servers sit behind the gateway, and the rules for their tools.

YAML (so a JSON client config pastes as it is). Upstreams are the `mcpServers` object of
Claude Desktop, Cursor and VS Code configs (`{"name": {"url": ..., "headers": {...}}}`),
with Bastion's own fields beside `url` (docs/gateway.md):

```yaml
version: 1
mcpServers:
  time:
    url: http://time:3002/mcp
    headers: {Authorization: "Bearer ${env:TIME_TOKEN}"}
    prefix: time                      # tools are exposed as time_<tool>
    permissions: {read: time:read, write: time:write}
    tools: {convert_time: {permission: time:read, cost: 2}, delete_all: {deny: true}}
    timeout_seconds: 10
    max_concurrency: 8
    pinning: approve                  # approve | auto | off
    redact: true
```

A local (stdio) server is an entry with `command` instead of `url` (Claude Desktop's
`command`, `args`, `env`, and `cwd`), with `isolation` (`shared` | `per-principal`),
`idle_timeout_seconds` and `max_processes` beside it; `${principal_dir}` in `args` is the
process's own directory (per-principal servers only).

Header values are only secret references, `${env:NAME}` or `${file:/path}` (optionally
after a scheme word: `Bearer ${env:NAME}`), never inline; so are `env` values whose name
looks sensitive (`logging.is_sensitive_key`) or whose value looks like a credential. All are
resolved once, at start-up, and held as `SecretStr`. `load_policy` reads, validates and
resolves the file, or raises `PolicyError` with one line per problem naming the place.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from bastion_common.logging import find_credentials, is_sensitive_key
from bastion_common.permissions import DEFAULT_ROLES, RoleTable
from bastion_common.policyroles import (
    PERMISSION_PATTERN,
    ROLE_PATTERN,
    Permission,
    RolePolicy,
    role_table,
)
from bastion_common.secretrefs import ENV_NAME, check_reference, is_reference, resolve

__all__ = [
    "PERMISSION_PATTERN",
    "PREFIX_PATTERN",
    "ROLE_PATTERN",
    "PRINCIPAL_DIR",
    "Isolation",
    "Pinning",
    "Policy",
    "PolicyError",
    "ToolPolicy",
    "UpstreamPermissions",
    "UpstreamPolicy",
    "load_policy",
    "parse_policy",
]

PREFIX_PATTERN = r"^[a-z][a-z0-9-]{0,31}$"
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
# Headers the MCP transport owns: a policy file must not set them.
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "accept",
        "mcp-session-id",
        "mcp-protocol-version",
        "last-event-id",
    }
)

Pinning = Literal["approve", "auto", "off"]
Isolation = Literal["shared", "per-principal"]
# In a stdio server's args: the directory the gateway gives that process (its own).
PRINCIPAL_DIR = "${principal_dir}"
# Set by the gateway for every stdio child (docs/gateway.md): never by the file.
_GATEWAY_ENV = frozenset({"HOME", "PATH", "PWD"})
_URL_USERINFO = re.compile(r"://[^/@\s]*:[^/@\s]*@")


class PolicyError(Exception):
    """The policy file cannot be used; `problems` is one line per problem, naming the place."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


SecretReference = Annotated[str, AfterValidator(check_reference)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ToolPolicy(_Strict):
    """What the file says of one upstream tool; unset fields take the upstream's defaults."""

    permission: Permission | None = None
    cost: int = Field(default=1, ge=1, le=1000)
    deny: bool = False


class UpstreamPermissions(_Strict):
    """Permissions for tools the file names no permission for: `read` for tools whose
    annotations say `readOnlyHint`, `write` for every other. Default `<prefix>:read` and
    `<prefix>:write`."""

    read: Permission | None = None
    write: Permission | None = None


class UpstreamPolicy(_Strict):
    # The mcpServers fields: a remote server (url, headers; `type` as clients write it) or
    # a local one run as a child process (command, args, env, cwd).
    url: str | None = None
    type: Literal["http", "streamable-http", "streamableHttp", "stdio"] | None = None
    headers: dict[str, SecretReference] = Field(default_factory=dict)
    command: str | None = Field(default=None, min_length=1, max_length=4096)
    args: list[Annotated[str, Field(max_length=4096)]] = Field(default_factory=list, max_length=256)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = Field(default=None, max_length=255)
    # Bastion's own.
    prefix: str | None = Field(default=None, pattern=PREFIX_PATTERN)
    permissions: UpstreamPermissions = Field(default_factory=UpstreamPermissions)
    tools: dict[str, ToolPolicy] = Field(default_factory=dict)
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    max_concurrency: int = Field(default=8, ge=1, le=1024)
    pinning: Pinning = "approve"
    redact: bool = True
    refresh_seconds: float = Field(default=300.0, ge=1, le=86400)
    breaker_failures: int = Field(default=5, ge=1, le=1000)
    breaker_reset_seconds: float = Field(default=30.0, gt=0, le=3600)
    # stdio only: one process for everyone, or one per principal (the token's subject),
    # started on first use, stopped after idle_timeout_seconds, at most max_processes.
    isolation: Isolation = "shared"
    idle_timeout_seconds: float = Field(default=300.0, ge=1, le=86400)
    max_processes: int = Field(default=16, ge=1, le=1024)

    _secret_headers: dict[str, SecretStr] = PrivateAttr(default_factory=dict)
    _secret_env: dict[str, SecretStr] = PrivateAttr(default_factory=dict)

    @field_validator("pinning", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        # YAML 1.1 reads an unquoted `off` as false: `pinning: off` means "off".
        return "off" if value is False else value

    @property
    def stdio(self) -> bool:
        return self.command is not None

    @model_validator(mode="after")
    def _checked(self) -> UpstreamPolicy:
        if (self.url is None) == (self.command is None):
            raise ValueError("give either url (a remote server) or command (a local stdio one)")
        if self.command is not None:
            return self._checked_stdio()
        assert self.url is not None  # noqa: S101 - one of the two, checked above
        if self.type == "stdio":
            raise ValueError("type stdio needs command, not url")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("url must not carry credentials: put them in headers as references")
        for name, _ in parse_qsl(parts.query, keep_blank_values=True):
            if is_sensitive_key(name):
                raise ValueError(
                    f"url query parameter {name[:32]!r} looks like a credential: put it in"
                    " headers as a reference"
                )
        for name in self.headers:
            if not _HEADER_NAME.match(name):
                raise ValueError(f"header name {name[:64]!r} is not a valid HTTP header name")
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"header {name} is set by the MCP transport, not the policy")
        if self.isolation != "shared":
            raise ValueError("isolation per-principal is for stdio servers (command) only")
        return self

    def _checked_stdio(self) -> UpstreamPolicy:
        if self.type not in (None, "stdio"):
            raise ValueError(f"type {self.type} needs url, not command")
        if self.headers:
            raise ValueError("headers are for remote servers: a stdio server takes env")
        if "\0" in (self.command or "") or any("\0" in arg for arg in self.args):
            raise ValueError("command and args must not contain NUL")
        if self.isolation == "shared" and any(PRINCIPAL_DIR in arg for arg in self.args):
            raise ValueError(f"{PRINCIPAL_DIR} needs isolation: per-principal")
        if self.cwd is not None:
            parts = self.cwd.split("/")
            if self.cwd.startswith("/") or ".." in parts or "\0" in self.cwd:
                raise ValueError(
                    "cwd must be a relative path without '..': it is taken inside the"
                    " directory the gateway gives the process"
                )
        for name, value in self.env.items():
            if not ENV_NAME.match(name):
                raise ValueError(f"env name {name[:64]!r} is not a variable name (A-Z, 0-9, _)")
            if name.upper() in _GATEWAY_ENV:
                raise ValueError(f"env {name} is set by the gateway, not the policy")
            if is_reference(value):
                check_reference(value)
            elif is_sensitive_key(name) or _looks_secret(value):
                raise ValueError(
                    f"env {name} must be a secret reference such as ${{env:NAME}} or"
                    " ${file:/run/secrets/x}, never a literal value"
                )
            elif "\0" in value:
                raise ValueError(f"env {name} must not contain NUL")
        return self

    @property
    def secret_headers(self) -> Mapping[str, SecretStr]:
        """The headers with their references resolved (filled by `load_policy`)."""
        return self._secret_headers

    @property
    def secret_env(self) -> Mapping[str, SecretStr]:
        """A stdio server's env, references resolved and plain values as they are (filled by
        `load_policy`): the only variables its process gets besides the gateway's own."""
        return self._secret_env


def _looks_secret(value: str) -> bool:
    """A plain env value that would be a credential in the file: a known shape, or a URL
    with a password."""
    return bool(find_credentials(value)[1]) or bool(_URL_USERINFO.search(value))


class Policy(_Strict):
    version: Literal[1] = 1
    # None: the built-in roles (policyroles); a mapping defines every role there is.
    roles: dict[Annotated[str, Field(pattern=ROLE_PATTERN)], RolePolicy] | None = Field(
        default=None, min_length=1, max_length=256
    )
    mcp_servers: dict[str, UpstreamPolicy] = Field(default_factory=dict, alias="mcpServers")
    _roles: RoleTable = PrivateAttr(default=DEFAULT_ROLES)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _prefixes(self) -> Policy:
        seen: dict[str, str] = {}
        for name, upstream in self.mcp_servers.items():
            prefix = upstream.prefix or name
            if not re.match(PREFIX_PATTERN, prefix):
                raise ValueError(
                    f"mcpServers.{name}: the name is not a valid prefix (lower-case letters,"
                    " digits, '-'): set prefix"
                )
            if prefix in seen:
                raise ValueError(f"mcpServers.{name}: prefix {prefix!r} is also {seen[prefix]}'s")
            seen[prefix] = name
        return self

    def prefix_of(self, name: str) -> str:
        return self.mcp_servers[name].prefix or name

    @property
    def role_table(self) -> RoleTable:
        """Role -> permissions and rate limit, and every permission offered (policyroles)."""
        return self._roles


def parse_policy(
    text: str,
    *,
    source: str = "policy",
    environ: Mapping[str, str] | None = None,
    resolve_secrets: bool = True,
) -> Policy:
    """Validate `text` (YAML or JSON) and resolve its secret references (auth and keys,
    which need only the roles, pass `resolve_secrets=False`: they never hold them)."""
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise PolicyError([f"{source}: {where}: {problem}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError([f"{source}: the file must be a mapping (version, mcpServers)"])
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError([_line(source, error) for error in exc.errors()]) from None
    upstreams = {name: (policy.prefix_of(name), u) for name, u in policy.mcp_servers.items()}
    policy._roles, problems = role_table(policy.roles, upstreams, source=source)
    env = os.environ if environ is None else environ
    for name, upstream in policy.mcp_servers.items() if resolve_secrets else ():
        for header, reference in upstream.headers.items():
            place = f"{source}: mcpServers.{name}.headers.{header}"
            value = resolve(reference, env, place, problems)
            if value is not None:
                upstream._secret_headers[header] = SecretStr(value)
        for variable, text in upstream.env.items():
            if is_reference(text):
                place = f"{source}: mcpServers.{name}.env.{variable}"
                resolved = resolve(text, env, place, problems)
                if resolved is None:
                    continue
                text = resolved
            upstream._secret_env[variable] = SecretStr(text)
    if problems:
        raise PolicyError(problems)
    return policy


def load_policy(
    path: str | Path, *, environ: Mapping[str, str] | None = None, resolve_secrets: bool = True
) -> Policy:
    """`parse_policy` of the file at `path`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError([f"{path}: cannot be read ({type(exc).__name__})"]) from None
    return parse_policy(text, source=str(path), environ=environ, resolve_secrets=resolve_secrets)


def _line(source: str, error: Any) -> str:
    loc = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{source}: {loc}: {message}" if loc else f"{source}: {message}"
