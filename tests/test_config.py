from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dispatcher.config import load_settings, redacted, settings_from_dict
from dispatcher.errors import ConfigError

FULL = """
server: {host: 127.0.0.1, port: 8080, max_body_bytes: 1048576, grace_period: 30}
store:
  url: sqlite:///./dispatcher-data/dispatcher.db
  min_free_bytes: 67108864
  lease: 30
auth:
  tokens:
    - {name: ops, token: "s3cret-ops", scopes: [produce, read, operate, admin]}
    - {name: app, token_env: APP_TOKEN, scopes: [produce]}
pools:
  email:
    concurrency: 8
    rate: 100
    burst: 20
    max_backlog: 100000
    timeout: 10
    retry: {max_attempts: 5, initial_backoff: 1, max_backoff: 300, multiplier: 2}
    sink: {type: webhook, url: "https://example.com/hook", secret: "whsec_abc", headers: {}}
  analytics:
    sink: {type: python, handler: "mypkg.handlers:record_event"}
routes:
  - {match: "user.signup", pools: [email, analytics]}
  - {match: "orders.*", pools: [email]}
  - {match: "clicks.>", pools: [analytics]}
security:
  webhook_allow_private: false
  webhook_allow_cidrs: []
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_the_design_example_loads(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, FULL), env={"APP_TOKEN": "t"})
    assert settings.pools["email"].rate == 100
    assert settings.pools["email"].retry.max_attempts == 5
    assert settings.pools["analytics"].concurrency == 8
    assert [r.match for r in settings.routes] == ["user.signup", "orders.*", "clicks.>"]


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, ""), env={})
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8080
    assert settings.server.grace_period == 30


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            "pools: {email: {sink: {type: log}, retry: {max_attempts: x}}}",
            "pools.email.retry.max_attempts: expected int, got str",
        ),
        ("server: {prot: 1}", "server.prot: unknown key"),
        ("nonsense: 1", "nonsense: unknown key"),
        ("pools: {email: {sink: {type: carrier-pigeon}}}", "pools.email.sink"),
        ("pools: {email: {}}", "pools.email.sink: required"),
        ("pools: {Email: {sink: {type: log}}}", "pools.Email: pool names"),
        ("pools: {email: {sink: {type: log}, concurrency: 0}}", "pools.email.concurrency"),
        ("routes: [{match: a.b, pools: [nope]}]", "routes.0.pools: unknown pool 'nope'"),
        ("routes: [{match: 'a.>.b', pools: []}]", "routes.0.match"),
        (
            "pools: {w: {sink: {type: webhook, url: 'http://127.0.0.1:9/x'}}}",
            "pools.w.sink.url: 127.0.0.1 is a private or loopback address",
        ),
        ("pools: {w: {sink: {type: webhook, url: 'http://localhost/x'}}}", "pools.w.sink.url"),
        ("pools: {w: {sink: {type: webhook, url: 'ftp://example.com/x'}}}", "pools.w.sink.url"),
        ("auth: {disabled: true}\nserver: {host: 0.0.0.0}", "auth.disabled"),
        ("auth: {tokens: [{name: a, token_env: NOPE_NOT_SET}]}", "auth.tokens.0.token_env"),
        ("store: {url: 'postgres://x'}", "store.url"),
        ("server: {port: 8080}\nserver: {port: 9090}", "server: given twice"),
        (
            "pools: {email: {sink: {type: log}, circuit: {cooldown: 10, max_cooldown: 5}}}",
            "pools.email.circuit.max_cooldown: is below cooldown",
        ),
        (
            "pools: {email: {sink: {type: log}, circuit: {failure_ratio: 0}}}",
            "pools.email.circuit.failure_ratio",
        ),
        (
            "pools: {email: {sink: {type: log}, circuit: {switch: 1}}}",
            "pools.email.circuit.switch: unknown key",
        ),
        (
            "pools: {email: {sink: {type: log}, concurrency: 4, adaptive: {min_concurrency: 5}}}",
            "pools.email.adaptive.min_concurrency: is above concurrency",
        ),
    ],
)
def test_refusals_name_the_key(tmp_path: Path, change: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, change), env={})
    assert str(info.value).startswith(message), str(info.value)


def test_private_webhook_allowed_by_cidr(tmp_path: Path) -> None:
    text = """
pools: {w: {sink: {type: webhook, url: 'http://127.0.0.1:9/x'}}}
security: {webhook_allow_cidrs: ["127.0.0.1/32"]}
"""
    assert load_settings(write(tmp_path, text), env={}).pools["w"].sink


def test_env_overrides_file_values(tmp_path: Path) -> None:
    env = {
        "DISPATCHER_SERVER__PORT": "9090",
        "DISPATCHER_STORE__URL": "memory://",
        "DISPATCHER_POOLS__EMAIL__RATE": "5.5",
        "APP_TOKEN": "t",
        "UNRELATED": "x",
    }
    settings = load_settings(write(tmp_path, FULL), env=env)
    assert settings.server.port == 9090
    assert settings.store.url == "memory://"
    assert settings.pools["email"].rate == 5.5


def test_env_override_of_unknown_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^server\.nope: unknown key"):
        load_settings(write(tmp_path, ""), env={"DISPATCHER_SERVER__NOPE": "1"})


def test_settings_are_frozen() -> None:
    settings = settings_from_dict({}, env={})
    with pytest.raises(AttributeError):
        settings.server.port = 1  # type: ignore[misc]


def test_redaction_hides_every_secret(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, FULL), env={"APP_TOKEN": "t"})
    text = repr(redacted(settings))
    assert "s3cret-ops" not in text
    assert "whsec_abc" not in text


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher", *args], capture_output=True, text=True, timeout=30
    )


@pytest.mark.allow_blocking
def test_check_config_prints_redacted_settings(tmp_path: Path) -> None:
    path = write(tmp_path, FULL.replace("token_env: APP_TOKEN", "token: app-secret"))
    result = run_cli("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert "s3cret-ops" not in result.stdout
    assert "app-secret" not in result.stdout
    assert "whsec_abc" not in result.stdout
    assert "email:" in result.stdout
    assert "***" in result.stdout


@pytest.mark.allow_blocking
def test_check_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "pools: {email: {sink: {type: log}, retry: {max_attempts: x}}}")
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert "pools.email.retry.max_attempts: expected int" in result.stderr


@pytest.mark.allow_blocking
def test_check_config_refuses_ssrf_target(tmp_path: Path) -> None:
    path = write(tmp_path, "pools: {w: {sink: {type: webhook, url: 'http://10.0.0.5/x'}}}")
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert "pools.w.sink.url" in result.stderr


@pytest.mark.allow_blocking
def test_serve_refuses_a_store_it_does_not_have_with_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, "store: {url: 'postgres://127.0.0.1:5432/db'}")
    result = run_cli("serve", "--config", str(path), "--port", "0")
    assert result.returncode == 2
    assert "store.url" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.allow_blocking
def test_serve_reports_an_unreachable_redis(tmp_path: Path) -> None:
    path = write(tmp_path, "store: {url: 'redis://127.0.0.1:1/0'}")
    result = run_cli("serve", "--config", str(path), "--port", "0")
    assert result.returncode == 1
    assert "cannot open the store" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_pool_timeout_must_fit_in_the_redis_lease() -> None:
    raw = {
        "store": {"url": "redis://127.0.0.1:6379/0", "lease": 10},
        "pools": {"slow": {"timeout": 10, "sink": {"type": "log"}}},
    }
    with pytest.raises(ConfigError, match=r"pools\.slow\.timeout: must be below store\.lease"):
        settings_from_dict(raw)
    raw["store"]["lease"] = 11
    settings_from_dict(raw)


@pytest.mark.allow_blocking
def test_serve_reports_an_unwritable_data_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    path = write(tmp_path, f"store: {{url: 'sqlite:///{tmp_path}/file/sub/d.db'}}")
    result = run_cli("serve", "--config", str(path), "--port", "0")
    assert result.returncode == 1
    assert "cannot open the store" in result.stderr
    assert "Traceback" not in result.stderr
