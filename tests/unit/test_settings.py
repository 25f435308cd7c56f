from __future__ import annotations

from pathlib import Path

import pytest

from pulse.settings import Settings, SettingsError, redact


def test_environment_wins_over_file_over_defaults(tmp_path: Path) -> None:
    config = tmp_path / "pulse.toml"
    config.write_text('gateway_port = 9000\nevents_ttl_days = 30\nmax_batch_events = 10\n')
    settings = Settings.load({"PULSE_CONFIG_FILE": str(config), "PULSE_GATEWAY_PORT": "9100"})
    assert settings.gateway_port == 9100
    assert settings.events_ttl_days == 30
    assert settings.limits.max_batch_events == 10
    assert settings.ledger_retention_days == 30
    assert Settings.load({}).gateway_port == 8080


def test_unset_urls_mean_embedded_and_set_ones_are_checked() -> None:
    assert Settings.load({}).postgres_url is None
    assert Settings.load({"PULSE_POSTGRES_URL": ""}).postgres_url is None
    with pytest.raises(SettingsError, match="PULSE_POSTGRES_URL"):
        Settings.load({"PULSE_POSTGRES_URL": "mysql://x@y/z"})
    with pytest.raises(SettingsError, match="PULSE_CLICKHOUSE_URL"):
        Settings.load({"PULSE_CLICKHOUSE_URL": "tcp://x"})


def test_bad_values_name_the_variable_and_hide_secrets() -> None:
    with pytest.raises(SettingsError, match="PULSE_GATEWAY_PORT"):
        Settings.load({"PULSE_GATEWAY_PORT": "eighty"})
    with pytest.raises(SettingsError) as caught:
        Settings.load({"PULSE_POSTGRES_URL": "ftp://admin:hunter2@db/x"})
    assert "hunter2" not in str(caught.value)
    settings = Settings.load({"PULSE_POSTGRES_URL": "postgresql://admin:hunter2@db:5432/x"})
    assert "hunter2" not in str(settings.describe())
    assert redact("postgresql://admin:hunter2@db:5432/x") == "postgresql://admin:***@db:5432/x"


def test_the_embedded_engines_release_time_is_read_and_bounded() -> None:
    assert Settings.load({}).chdb_release_ms == 1000
    assert Settings.load({"PULSE_CHDB_RELEASE_MS": "250"}).chdb_release_ms == 250
    for bad in ("-1", "600001", "soon"):
        with pytest.raises(SettingsError, match="PULSE_CHDB_RELEASE_MS"):
            Settings.load({"PULSE_CHDB_RELEASE_MS": bad})
