"""Configuration: typed, validated, one clear line naming the bad variable."""

from __future__ import annotations

import re
import runpy
import socket
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.application import default_error_domain, load_factory
from server.config import MAX_SECONDS, SETTINGS, ConfigError, EnvReader, ServerConfig
from tests.support.net import PYTHON, ROOT, free_port, port_open, service_env


def test_defaults_parse() -> None:
    config = ServerConfig.from_env({"SERVICE": "accounts"})
    assert config.grpc_port == 50051
    assert config.max_connection_age == 300.0
    assert config.max_connection_age_grace == 30.0
    assert dict(config.grpc_options())["grpc.max_connection_age_ms"] == 300_000
    assert config.shed_queue_delay == 0.05  # queue-delay shedding is on
    assert config.shed_queue_delay_min_handling == 0.0005  # for methods that are not cheap
    assert config.event_loop == "UVLOOP"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GRPC_PORT", "abc"),
        ("GRPC_PORT", "70000"),
        ("ADMIN_PORT", "-1"),
        ("LOG_LEVEL", "LOUD"),
        ("EVENT_LOOP", "trio"),
        ("SHUTDOWN_GRACE_SECONDS", "soon"),
        ("SHUTDOWN_DELAY_SECONDS", "-3"),
        ("LOG_SLOW_CALLS_SECONDS", "1s"),
        ("GRPC_MAX_CONNECTION_AGE_SECONDS", "nan"),
        ("GRPC_MAX_RECEIVE_MESSAGE_BYTES", "12"),
        ("SHED_QUEUE_DELAY_SECONDS", "-0.05"),
        ("SHED_QUEUE_DELAY_SECONDS", "50ms"),
        ("SHED_QUEUE_DELAY_MIN_HANDLING_SECONDS", "-1"),
        # Values that used to start a server that fails open or fails every call:
        ("SHED_QUEUE_DELAY_SECONDS", "1e-300"),  # shed up to 90% for good
        ("GRPC_MAX_CONNECTION_IDLE_SECONDS", "0"),  # every call UNAVAILABLE
        ("GRPC_MAX_CONNECTION_AGE_SECONDS", "0.0001"),  # 0 ms for grpc
        ("GRPC_KEEPALIVE_TIME_SECONDS", "1e7"),  # overflowed grpc's int: a traceback
        ("GRPC_MAX_RECEIVE_MESSAGE_BYTES", "4294967296"),
        ("RATE_LIMIT_OVERRIDES", "a.B/C=10:inf"),  # the limit silently off
        ("RATE_LIMIT_OVERRIDES", "a.B/C=inf"),
        ("RATE_LIMIT_OVERRIDES", "a.B/C=nan"),  # every call INTERNAL
        ("RATE_LIMIT_OVERRIDES", "a.B/C=1e400"),
        ("RATE_LIMIT_RPS", "fast"),
        ("RATE_LIMIT_BURST", "-5"),
    ],
)
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{name} ") as caught:
        ServerConfig.from_env({"SERVICE": "accounts", name: value})
    assert "\n" not in str(caught.value)
    assert repr(value) in str(caught.value) or f"'{float(value):g}'" in str(caught.value)


def test_rates_are_read_as_numbers_not_times() -> None:
    with pytest.raises(ConfigError) as caught:
        ServerConfig.from_env({"SERVICE": "accounts", "RATE_LIMIT_RPS": "fast"})
    assert str(caught.value) == (
        f"RATE_LIMIT_RPS must be a number from 0 to {MAX_SECONDS}, got 'fast'"
    )


def test_rate_limit_overrides_parse() -> None:
    config = ServerConfig.from_env(
        {
            "SERVICE": "accounts",
            "RATE_LIMIT_RPS": "100",
            "RATE_LIMIT_OVERRIDES": "ledger.v1.Accounts/Withdraw=10:20, ledger.v1.Accounts/Get=0",
        }
    )
    withdraw = config.rate_for("/ledger.v1.Accounts/Withdraw")
    assert withdraw is not None
    assert (withdraw.per_second, withdraw.burst) == (10, 20)
    assert config.rate_for("/ledger.v1.Accounts/Get") is None  # 0: no limit for it
    other = config.rate_for("/ledger.v1.Accounts/Deposit")
    assert other is not None
    assert other.per_second == 100


def test_missing_service_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^SERVICE is required"):
        ServerConfig.from_env({})


@pytest.mark.parametrize(
    "spec",
    ["no_such_module:build", "tests.support.echo:no_such_factory", "missing-module-entry"],
)
def test_a_service_that_cannot_be_loaded_is_one_line_naming_service(
    spec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken:  # an installed entry point whose module is gone
        name = "missing-module-entry"

        def load(self) -> None:
            raise ModuleNotFoundError("No module named 'myservice'")

    monkeypatch.setattr("server.application.entry_points", lambda group: [Broken()])
    with pytest.raises(ConfigError, match=r"^SERVICE names .+, which cannot be loaded: ") as caught:
        load_factory(spec)
    assert "\n" not in str(caught.value)


def test_the_default_error_domain_is_dns_like() -> None:
    assert default_error_domain("accounts") == "accounts.grpc-platform.internal"
    assert default_error_domain("services.my_service.app:build") == (
        "services.my-service.app.grpc-platform.internal"
    )


@given(st.text(max_size=20))
def test_port_accepts_exactly_the_valid_ports(raw: str) -> None:
    reader = EnvReader({"P": raw})
    stripped = raw.strip()
    valid = bool(re.fullmatch(r"-?[0-9]+", stripped)) and 0 <= int(stripped) <= 65535
    if not stripped:
        with pytest.raises(ConfigError):
            reader.port("P")  # no default for an unknown name
    elif valid:
        assert reader.port("P") == int(stripped)
    else:
        with pytest.raises(ConfigError, match=r"^P must be an integer"):
            reader.port("P")


@pytest.mark.parametrize(
    ("name", "value"),
    [("GRPC_PORT", "not-a-port"), ("LOG_LEVEL", "CHATTY"), ("SERVICE", "no-such-service")],
)
def test_process_exits_2_with_one_line_and_binds_nothing(name: str, value: str) -> None:
    grpc_port, admin_port = free_port(), free_port()
    env = service_env("accounts", grpc_port, admin_port, **{name: value})
    result = subprocess.run(
        [PYTHON, "-m", "server"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"configuration error: {name} ")
    assert not port_open(grpc_port)
    assert not port_open(admin_port)


def test_taken_port_is_one_startup_line_and_nothing_left_listening() -> None:
    grpc_port, admin_port = free_port(), free_port()
    env = service_env("tests.support.echo:build", grpc_port, admin_port)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", grpc_port))
        taken.listen()
        result = subprocess.run(
            [PYTHON, "-m", "server"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("startup error: cannot listen")
    assert "GRPC_PORT" in result.stderr
    assert not port_open(admin_port)


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    generator = runpy.run_path(str(ROOT / "tools" / "readme_config.py"))
    assert generator["table"]() in readme, "run `python tools/readme_config.py`"
    for setting in SETTINGS:
        row = re.search(rf"^\| `{setting.name}` \|(.+)$", readme, re.MULTILINE)
        assert row, f"README's configuration table lacks {setting.name}"
        expected = {None: "required", "": "empty"}.get(setting.default, f"`{setting.default}`")
        assert expected in row.group(1), setting.name
