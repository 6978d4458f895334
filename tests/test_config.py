"""Settings: one frozen object from flags and MBOSTREAM_* variables, validated with named errors."""

from __future__ import annotations

import dataclasses
import os
import re

import pytest
from server_harness import repo

from mbostream.config import RANGES, SOURCES, Settings, load_settings
from mbostream.errors import ConfigError


def test_defaults_and_frozen() -> None:
    s = load_settings({}, environ={})
    assert (s.host, s.port, s.pacing, s.rate, s.loop) == ("127.0.0.1", 50051, "rate", 100_000.0, False)
    assert s.control_token is None
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
    assert "--port" in proc.stderr and RANGES["port"].describe() in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "mbostream.cli", "serve"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "MBOSTREAM_RATE": "inf"},
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--rate / MBOSTREAM_RATE" in proc.stderr and "Traceback" not in proc.stderr


#: Numbers that parse but must never reach the server: non-finite, tiny, huge, or just outside.
BAD_NUMBERS = {
    "rate": ["inf", "-inf", "nan", "0", "1e-300", "1e300"],
    "speed": ["inf", "nan", "0", "1e-300", "1e300"],
    "book_interval_ms": ["nan", "inf", "0.0001", "-1", "1e9"],
    "book_interval_max_ms": ["nan", "inf", "0", "0.5", "1e9"],
    "book_cpu_target": ["nan", "inf", "-1", "0.01", "1025"],
    "grace_seconds": ["nan", "inf", "-1", "1e9"],
    "batch_records": ["0", "1000000000"],
    "max_streams": ["0", "1000000000"],
    "max_streams_per_peer": ["0", "1000000000"],
    "listeners": ["0", "65"],
    "subscriber_buffer_batches": ["0"],
    "replay_buffer_records": ["0"],
    "metrics_port": ["-2", "65536"],
    "book_port": ["-2", "65536"],
    "book_threads": ["0", "65"],
    "book_thread_priority": ["-1", "100"],
    "port": ["-1", "65536"],
    "edge_port": ["-1", "65536"],
    "sample_records": ["0"],
    "sample_instruments": ["0", "1025"],
    "sample_seed": ["-1", str(2**64)],
    "bus_max_age_seconds": ["nan", "inf", "59", "1e9"],
    "bus_max_bytes": ["0", "1048575", str(2**41)],
    "snapshot_interval_seconds": ["nan", "0", "0.01", "3601"],
    "store_ack_interval_seconds": ["nan", "inf", "0", "0.001", "1e9"],
}
#: The command whose flag a setting is, when it is not ``serve``'s.
FLAG_COMMAND = {"edge_port": "run", "bus_max_age_seconds": "replay", "bus_max_bytes": "replay", "snapshot_interval_seconds": "replay", "store_ack_interval_seconds": "store"}


#: Numeric settings without a command-line flag.
VARIABLE_ONLY = {"subscriber_buffer_batches", "replay_buffer_records", "sample_records", "sample_instruments", "sample_seed"}


def test_every_numeric_setting_has_one_documented_range() -> None:
    numeric = {name for name, f in Settings.__dataclass_fields__.items() if f.type in ("int", "float")}
    assert numeric == set(RANGES)
    assert set(BAD_NUMBERS) == set(RANGES)
    env_example = (repo() / ".env.example").read_text()
    for name, allowed in RANGES.items():
        # Each variable's comment (the comment lines just above it) quotes its range.
        variable = SOURCES[name][1]
        above = env_example.split(f"\n{variable}=")[0].splitlines()
        comment = []
        while above and above[-1].startswith("#"):
            comment.insert(0, above.pop().lstrip("# "))
        assert allowed.describe() in " ".join(comment), (variable, allowed.describe())


@pytest.mark.parametrize(("name", "text"), [(n, t) for n, texts in BAD_NUMBERS.items() for t in texts])
def test_numbers_outside_their_range_are_refused_from_variables_and_flags(name: str, text: str, capsys) -> None:
    variable = SOURCES[name][1]
    with pytest.raises(ConfigError) as err:
        load_settings({}, environ={variable: text})
    assert variable in str(err.value) and RANGES[name].describe() in str(err.value)

    from mbostream.cli import build_parser

    flag = SOURCES[name][0]
    if name in VARIABLE_ONLY:
        return
    args = [FLAG_COMMAND.get(name, "serve"), f"{flag}={text}"]
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(args)
    assert exit_.value.code == 2
    stderr = capsys.readouterr().err
    assert f"argument {flag}" in stderr and RANGES[name].describe() in stderr


@pytest.mark.parametrize("name", sorted(RANGES))
def test_both_ends_of_every_range_are_accepted(name: str) -> None:
    allowed = RANGES[name]
    for value in (allowed.low, allowed.high):
        text = str(int(value)) if allowed.integer else repr(float(value))
        assert getattr(load_settings({}, environ={SOURCES[name][1]: text}), name) == value


def test_help_states_the_ranges(capsys) -> None:
    from mbostream.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ("rate", "speed", "book_interval_ms", "grace_seconds", "batch_records", "max_streams"):
        assert RANGES[name].describe() in text, name


def test_storage_numbers_use_the_same_ranges() -> None:
    """The storage variables go through the same Range checks: every number finite and bounded."""
    from mbostream.storage.settings import ENV_VARIABLES, RANGES as STORAGE_RANGES
    from mbostream.storage.settings import StorageSettings

    numeric = {f.name for f in dataclasses.fields(StorageSettings) if f.type in ("int", "float")}
    assert numeric == set(STORAGE_RANGES)
    for name, allowed in STORAGE_RANGES.items():
        bad = ["nan", "inf", "1e300", "-1"] if not allowed.integer else ["-1", str(2**60)]
        for text in bad:
            with pytest.raises(ConfigError) as err:
                StorageSettings.from_env({ENV_VARIABLES[name]: text})
            assert err.value.setting == ENV_VARIABLES[name], (name, text)
