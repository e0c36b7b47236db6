"""The policy file: upstreams in the mcpServers format, secrets only by reference, and one
line per problem naming the place (bastion_common.policyfile)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion_common.policyfile import PolicyError, load_policy, parse_policy

GOOD = """
version: 1
mcpServers:
  time:
    url: http://time:3002/mcp
    headers:
      Authorization: "Bearer ${env:TIME_TOKEN}"
      X-Api-Key: "${file:%s}"
    tools:
      convert_time: {permission: weather:read, cost: 3}
      get_current_time: {deny: true}
    pinning: auto
  Everything:
    type: http
    url: https://everything.example/mcp
    prefix: ev
    permissions: {read: weather:read, write: files:write}
"""


def _problems(text: str, **env: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, source="p.yaml", environ=env)
    return caught.value.problems


def test_a_pasted_client_config_with_bastion_fields_is_read(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("k-123\n")
    policy = parse_policy(GOOD % key, environ={"TIME_TOKEN": "t-456"})
    time = policy.mcp_servers["time"]
    assert policy.prefix_of("time") == "time" and policy.prefix_of("Everything") == "ev"
    assert time.tools["convert_time"].cost == 3 and time.tools["get_current_time"].deny
    assert time.pinning == "auto" and policy.mcp_servers["Everything"].pinning == "approve"
    secrets = {k: v.get_secret_value() for k, v in time.secret_headers.items()}
    assert secrets == {"Authorization": "Bearer t-456", "X-Api-Key": "k-123"}
    # The resolved values never show in the model's text or its dump.
    assert "t-456" not in repr(policy) and "t-456" not in policy.model_dump_json()


def test_pinning_off_unquoted_means_off_though_yaml_reads_it_as_false() -> None:
    policy = parse_policy("mcpServers: {a: {url: 'http://a/mcp', pinning: off}}", environ={})
    assert policy.mcp_servers["a"].pinning == "off"


def test_json_from_a_client_config_is_accepted_as_it_is() -> None:
    text = '{"mcpServers": {"remote": {"url": "https://mcp.example/mcp", "headers": {}}}}'
    assert parse_policy(text, environ={}).mcp_servers["remote"].url == "https://mcp.example/mcp"


def test_an_inline_header_value_is_refused_without_echoing_it() -> None:
    text = """
mcpServers:
  a: {url: "http://a/mcp", headers: {Authorization: "Bearer sk-live-0123456789"}}
"""
    (line,) = _problems(text)
    assert line.startswith("p.yaml: mcpServers.a.headers.Authorization: must be a secret reference")
    assert "sk-live" not in line


def test_every_problem_gets_its_own_line_naming_the_place() -> None:
    text = """
mcpServers:
  a: {url: "ftp://a/mcp", timeout_seconds: 0}
  b: {url: "http://b/mcp", pinning: sometimes, tools: {t: {cost: 0, colour: red}}}
  c: {command: npx, url: "http://c/mcp"}
"""
    problems = _problems(text)
    assert any(p.startswith("p.yaml: mcpServers.a.timeout_seconds:") for p in problems)
    assert any(p.startswith("p.yaml: mcpServers.b.pinning:") for p in problems)
    assert any(p.startswith("p.yaml: mcpServers.b.tools.t.cost:") for p in problems)
    assert any(p.startswith("p.yaml: mcpServers.b.tools.t.colour:") for p in problems)
    assert any("mcpServers.c" in p and "either url" in p for p in problems)
    assert len(problems) == 5


def test_a_missing_secret_names_the_variable_and_never_a_value(tmp_path: Path) -> None:
    text = f"""
mcpServers:
  a:
    url: "http://a/mcp"
    headers: {{X-One: "${{env:NOPE}}", X-Two: "${{file:{tmp_path}/gone}}"}}
"""
    problems = _problems(text)
    assert problems == [
        "p.yaml: mcpServers.a.headers.X-One: environment variable NOPE is not set",
        f"p.yaml: mcpServers.a.headers.X-Two: {tmp_path}/gone cannot be read (FileNotFoundError)",
    ]


def test_a_secret_with_a_line_break_cannot_inject_a_header() -> None:
    text = 'mcpServers: {a: {url: "http://a/mcp", headers: {X-K: "${env:K}"}}}'
    (line,) = _problems(text, K="value\r\nX-Evil: 1")
    assert line.endswith("the secret contains a line break or NUL")


def test_credentials_in_the_url_and_transport_headers_are_refused() -> None:
    text = """
mcpServers:
  a: {url: "http://user:pw@a/mcp"}
  b: {url: "http://b/mcp", headers: {Mcp-Session-Id: "${env:S}"}}
  c: {url: "https://c/mcp?region=eu&api_key=sk-live-123456"}
"""
    problems = _problems(text, S="x")
    assert any("mcpServers.a" in p and "must not carry credentials" in p for p in problems)
    assert any("mcpServers.c" in p and "'api_key' looks like a credential" in p for p in problems)
    assert not any("sk-live" in p for p in problems)
    assert any("mcpServers.b" in p and "set by the MCP transport" in p for p in problems)


def test_two_upstreams_cannot_share_a_prefix_and_a_bad_name_needs_one() -> None:
    dup = 'mcpServers: {a: {url: "http://a/mcp", prefix: x}, b: {url: "http://b/mcp", prefix: x}}'
    assert "prefix 'x' is also a's" in _problems(dup)[0]
    bad = 'mcpServers: {"My Server": {url: "http://a/mcp"}}'
    assert "not a valid prefix" in _problems(bad)[0]


def test_yaml_that_does_not_parse_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("mcpServers:\n  a: {url: [\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    (line,) = caught.value.problems
    assert line.startswith(f"{path}: line ")


def test_an_unreadable_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path / "nope.yaml")
    assert caught.value.problems == [f"{tmp_path}/nope.yaml: cannot be read (FileNotFoundError)"]


def test_the_shipped_example_and_test_policies_are_valid() -> None:
    root = Path(__file__).resolve().parents[3] / "deploy"
    example = load_policy(root / "policy.example.yaml", environ={})
    assert example.prefix_of("time") == "time"
    secrets = {"EVERYTHING_TOKEN": "t"}
    text = (root / "upstreams" / "policy.test.yaml").read_text()
    # The test policy reads its time key from a file that only the test stack mounts.
    text = text.replace("${file:/run/bastion-time-key}", "${env:TIME_KEY}")
    test = parse_policy(text, environ={**secrets, "TIME_KEY": "k"})
    assert test.mcp_servers["everything"].tools["gzip-file-as-resource"].deny


STDIO = """
mcpServers:
  fs:
    command: node
    args: [/opt/stdio/fs.js, "${principal_dir}"]
    env: {NODE_OPTIONS: --experimental-global-webcrypto, GITHUB_TOKEN: "${env:GH}"}
    cwd: work
    isolation: per-principal
    idle_timeout_seconds: 60
    max_processes: 3
  clock: {type: stdio, command: /opt/stdio/venv/bin/mcp-server-time}
"""


def test_a_stdio_server_in_the_claude_desktop_format_is_read() -> None:
    policy = parse_policy(STDIO, environ={"GH": "ghp_" + "a" * 36})
    fs, clock = policy.mcp_servers["fs"], policy.mcp_servers["clock"]
    assert fs.stdio and fs.url is None and fs.isolation == "per-principal"
    assert fs.args == ["/opt/stdio/fs.js", "${principal_dir}"] and fs.cwd == "work"
    assert (fs.idle_timeout_seconds, fs.max_processes) == (60, 3)
    env = {k: v.get_secret_value() for k, v in fs.secret_env.items()}
    assert env == {
        "NODE_OPTIONS": "--experimental-global-webcrypto",
        "GITHUB_TOKEN": "ghp_" + "a" * 36,
    }
    assert clock.isolation == "shared" and clock.secret_env == {}
    assert "ghp_" not in repr(policy) and "ghp_" not in policy.model_dump_json()


def test_a_literal_secret_in_a_stdio_env_is_refused_without_echoing_it() -> None:
    text = """
mcpServers:
  a: {command: x, env: {GITHUB_TOKEN: "not-a-reference-1234"}}
  b: {command: x, env: {HARMLESS_NAME: "ghp_0123456789abcdefghij0123456789abcdef"}}
  c: {command: x, env: {DATABASE_URL: "postgres://app:hunter2pw@db/app"}}
  d: {command: x, env: {LOG_LEVEL: debug, DB_HOST: db}}
"""
    problems = _problems(text)
    assert len(problems) == 3, problems
    for name, variable in (("a", "GITHUB_TOKEN"), ("b", "HARMLESS_NAME"), ("c", "DATABASE_URL")):
        assert any(f"mcpServers.{name}" in p and f"env {variable} must be a secret reference" in p
                   for p in problems)  # fmt: skip
    joined = "\n".join(problems)
    assert "not-a-reference" not in joined and "ghp_0123" not in joined and "hunter2" not in joined


def test_a_stdio_env_reference_that_cannot_be_had_names_the_variable() -> None:
    (line,) = _problems('mcpServers: {a: {command: x, env: {API_KEY: "${env:MISSING}"}}}')
    assert line == "p.yaml: mcpServers.a.env.API_KEY: environment variable MISSING is not set"


def test_what_the_gateway_owns_cannot_be_set_by_a_stdio_entry() -> None:
    text = """
mcpServers:
  a: {command: x, env: {HOME: /root}}
  b: {command: x, env: {PATH: /tmp/evil}}
  c: {command: x, cwd: /etc}
  d: {command: x, cwd: "work/../../other"}
  e: {command: x, args: ["${principal_dir}"]}
  f: {command: x, headers: {X-K: "${env:K}"}}
  g: {url: "http://g/mcp", isolation: per-principal}
  h: {type: stdio, url: "http://h/mcp"}
  i: {}
  j: {command: x, env: {"BAD NAME": v}}
"""
    problems = _problems(text, K="k")
    expected = {
        "a": "env HOME is set by the gateway",
        "b": "env PATH is set by the gateway",
        "c": "cwd must be a relative path",
        "d": "cwd must be a relative path",
        "e": "${principal_dir} needs isolation: per-principal",
        "f": "headers are for remote servers",
        "g": "per-principal is for stdio servers",
        "h": "type stdio needs command",
        "i": "either url",
        "j": "is not a variable name",
    }
    for name, text_ in expected.items():
        assert any(f"mcpServers.{name}:" in p and text_ in p for p in problems), (name, problems)
    assert len(problems) == len(expected)
