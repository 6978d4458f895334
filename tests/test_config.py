"""Settings: one frozen object from flags and MBOSTREAM_* variables, validated with named errors."""

from __future__ import annotations

import dataclasses
import re

import pytest
from server_harness import repo

from mbostream.config import SOURCES, Settings, load_settings
from mbostream.errors import ConfigError


def test_defaults_and_frozen() -> None:
    s = load_settings({}, environ={})
    assert (s.host, s.port, s.pacing, s.rate, s.loop) == ("127.0.0.1", 50051, "rate", 100_000.0, False)
    assert s.control_token is None and not s.control_enabled
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]


def test_flags_win_over_environment_and_empty_variables_are_unset() -> None:
    env = {"MBOSTREAM_PORT": "6000", "MBOSTREAM_RATE": "5000", "MBOSTREAM_LOOP": "yes", "MBOSTREAM_SPEED": ""}
    s = load_settings({"port": 7000}, environ=env)
    assert (s.port, s.rate, s.loop, s.speed) == (7000, 5000.0, True, 1.0)


def test_token_from_file(tmp_path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    s = load_settings({}, environ={"MBOSTREAM_CONTROL_TOKEN_FILE": str(token)})
    assert s.control_token == "s3cret-token"
    assert "s3cret" not in repr(s)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MBOSTREAM_PORT": "70000"}, "MBOSTREAM_PORT"),
        ({"MBOSTREAM_PORT": "abc"}, "MBOSTREAM_PORT"),
        ({"MBOSTREAM_RATE": "-1"}, "MBOSTREAM_RATE"),
        ({"MBOSTREAM_PACING": "warp"}, "MBOSTREAM_PACING"),
        ({"MBOSTREAM_LOG_LEVEL": "loud"}, "MBOSTREAM_LOG_LEVEL"),
        ({"MBOSTREAM_FILES": "/no/such/file.dbn"}, "MBOSTREAM_FILES"),
        ({"MBOSTREAM_CONTROL_TOKEN": "short"}, "MBOSTREAM_CONTROL_TOKEN"),
        ({"MBOSTREAM_CONTROL_TOKEN_FILE": "/no/such/token"}, "MBOSTREAM_CONTROL_TOKEN_FILE"),
        ({"MBOSTREAM_MAX_STREAMS": "0"}, "MBOSTREAM_MAX_STREAMS"),
        ({"MBOSTREAM_LOOP": "maybe"}, "MBOSTREAM_LOOP"),
    ],
)
def test_invalid_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings({}, environ=env)
    assert named in str(err.value)


def test_env_example_documents_every_setting() -> None:
    text = (repo() / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.M))
    expected = {env for _, env in SOURCES.values()} | {"MBOSTREAM_FILES", "MBOSTREAM_CONTROL_TOKEN", "MBOSTREAM_CONTROL_TOKEN_FILE"}
    assert expected <= documented, sorted(expected - documented)
    assert set(Settings.__dataclass_fields__) - {"files", "control_token", "storage"} == set(SOURCES)


def test_serve_rejects_bad_settings_with_a_clear_error() -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "mbostream.cli", "serve", "--port", "99999"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "--port / MBOSTREAM_PORT" in proc.stderr and "Traceback" not in proc.stderr
