"""StorageSettings: defaults, environment parsing, and errors that name the bad variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from mbostream.errors import ConfigError
from mbostream.storage import StorageSettings

DB = {"INFLUX_URL": "http://127.0.0.1:8086", "INFLUX_ORG": "desk", "INFLUX_BUCKET": "feed", "INFLUX_TOKEN": "s3cret"}


def test_defaults_have_no_database_and_no_credential() -> None:
    settings = StorageSettings.from_env({})
    assert settings == StorageSettings()
    assert not settings.database_configured
    assert settings.token is None
    assert settings.spool_dir == Path("var/spool")
    assert not settings.store_mbo
    assert settings.depth_interval_ns == 1_000_000_000


def test_every_variable_is_read() -> None:
    env = {
        **DB,
        "MBOSTREAM_SPOOL_DIR": "/tmp/spool",
        "MBOSTREAM_STORE_MBO": "yes",
        "MBOSTREAM_DEPTH_INTERVAL": "0.25",
        "MBOSTREAM_DEPTH_LEVELS": "5",
        "MBOSTREAM_STORAGE_BATCH_POINTS": "5000",
        "MBOSTREAM_STORAGE_FLUSH_INTERVAL": "0.5",
        "MBOSTREAM_STORAGE_MAX_PENDING_BYTES": "16M",
        "MBOSTREAM_SPOOL_SEGMENT_BYTES": "1MiB",
        "MBOSTREAM_STORAGE_TIMEOUT": "3",
        "MBOSTREAM_STORAGE_WRITE_CONCURRENCY": "4",
        "MBOSTREAM_STORAGE_MAX_RETRIES": "7",
        "MBOSTREAM_STORAGE_RETRY_INITIAL": "0.1",
        "MBOSTREAM_STORAGE_RETRY_MAX": "2",
        "MBOSTREAM_STORAGE_GZIP_LEVEL": "0",
    }
    s = StorageSettings.from_env(env)
    assert (s.url, s.org, s.bucket, s.token) == ("http://127.0.0.1:8086", "desk", "feed", "s3cret")
    assert s.spool_dir == Path("/tmp/spool")
    assert s.store_mbo is True
    assert s.depth_interval_ns == 250_000_000
    assert (s.depth_levels, s.batch_points, s.flush_interval) == (5, 5000, 0.5)
    assert (s.max_pending_bytes, s.segment_bytes) == (16 << 20, 1 << 20)
    assert (s.write_timeout, s.write_concurrency, s.max_retries) == (3.0, 4, 7)
    assert (s.retry_initial, s.retry_max, s.gzip_level) == (0.1, 2.0, 0)


def test_token_is_not_shown() -> None:
    assert "s3cret" not in repr(StorageSettings.from_env(DB))


def test_token_from_a_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-file\n")
    env = {k: v for k, v in DB.items() if k != "INFLUX_TOKEN"} | {"INFLUX_TOKEN_FILE": str(secret)}
    assert StorageSettings.from_env(env).token == "from-file"


def test_blank_values_count_as_unset() -> None:
    assert StorageSettings.from_env({"INFLUX_URL": " ", "MBOSTREAM_STORE_MBO": ""}) == StorageSettings()


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({**DB, "INFLUX_URL": "ftp://host"}, "INFLUX_URL"),
        ({k: v for k, v in DB.items() if k != "INFLUX_TOKEN"}, "INFLUX_TOKEN"),
        ({k: v for k, v in DB.items() if k != "INFLUX_ORG"}, "INFLUX_ORG"),
        ({k: v for k, v in DB.items() if k != "INFLUX_BUCKET"}, "INFLUX_BUCKET"),
        ({"INFLUX_TOKEN": "orphan"}, "INFLUX_URL"),
        ({**DB, "INFLUX_TOKEN_FILE": "/nonexistent"}, "INFLUX_TOKEN_FILE"),
        ({"INFLUX_TOKEN_FILE": "/nonexistent/token"}, "INFLUX_TOKEN_FILE"),
        ({"MBOSTREAM_STORE_MBO": "maybe"}, "MBOSTREAM_STORE_MBO"),
        ({"MBOSTREAM_DEPTH_INTERVAL": "-1"}, "MBOSTREAM_DEPTH_INTERVAL"),
        ({"MBOSTREAM_DEPTH_INTERVAL": "soon"}, "MBOSTREAM_DEPTH_INTERVAL"),
        ({"MBOSTREAM_DEPTH_LEVELS": "0"}, "MBOSTREAM_DEPTH_LEVELS"),
        ({"MBOSTREAM_DEPTH_LEVELS": "51"}, "MBOSTREAM_DEPTH_LEVELS"),
        ({"MBOSTREAM_STORAGE_BATCH_POINTS": "ten"}, "MBOSTREAM_STORAGE_BATCH_POINTS"),
        ({"MBOSTREAM_STORAGE_MAX_PENDING_BYTES": "12Q"}, "MBOSTREAM_STORAGE_MAX_PENDING_BYTES"),
        ({"MBOSTREAM_SPOOL_SEGMENT_BYTES": "10"}, "MBOSTREAM_SPOOL_SEGMENT_BYTES"),
        ({"MBOSTREAM_STORAGE_WRITE_CONCURRENCY": "0"}, "MBOSTREAM_STORAGE_WRITE_CONCURRENCY"),
        ({"MBOSTREAM_STORAGE_RETRY_MAX": "0.01"}, "MBOSTREAM_STORAGE_RETRY_MAX"),
        ({"MBOSTREAM_STORAGE_GZIP_LEVEL": "10"}, "MBOSTREAM_STORAGE_GZIP_LEVEL"),
        ({"MBOSTREAM_STORAGE_TIMEOUT": "nan"}, "MBOSTREAM_STORAGE_TIMEOUT"),
    ],
)
def test_bad_values_name_their_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        StorageSettings.from_env(env)
    assert caught.value.setting == variable
    assert str(caught.value).startswith(f"{variable}: ")


def test_both_token_sources_is_an_error(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("x")
    with pytest.raises(ConfigError, match="INFLUX_TOKEN_FILE"):
        StorageSettings.from_env({**DB, "INFLUX_TOKEN_FILE": str(secret)})


def test_direct_construction_is_validated_and_keyword_only() -> None:
    with pytest.raises(ConfigError) as caught:
        StorageSettings(depth_levels=0)
    assert caught.value.setting == "depth_levels"
    with pytest.raises(TypeError):
        StorageSettings("http://x")  # type: ignore[misc]


def test_settings_are_frozen() -> None:
    settings = StorageSettings()
    with pytest.raises(AttributeError):
        settings.store_mbo = True  # type: ignore[misc]


def test_the_env_example_documents_every_variable_with_its_default() -> None:
    from mbostream.storage.settings import ENV_VARIABLES, TOKEN_FILE_VARIABLE

    example = Path(__file__).resolve().parents[1] / ".env.example"
    text = example.read_text()
    assert "# --- storage ---" in text
    env = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            env[name.strip()] = value.strip()
    assert set(ENV_VARIABLES.values()) | {TOKEN_FILE_VARIABLE} <= set(env)
    storage_env = {k: v for k, v in env.items() if k in set(ENV_VARIABLES.values()) | {TOKEN_FILE_VARIABLE}}
    assert StorageSettings.from_env(storage_env) == StorageSettings()
