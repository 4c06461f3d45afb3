import re
from pathlib import Path

import pytest

from pipeline.settings import Settings, duration_ms

CONFIGURATION = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_durations():
    assert duration_ms("90s") == 90_000 and duration_ms("5m") == 300_000
    assert duration_ms("24h") == 86_400_000 and duration_ms("7d") == 604_800_000 and duration_ms("30") == 30_000
    with pytest.raises(ValueError):
        duration_ms("soon")


def test_environment_over_file_over_defaults(tmp_path, monkeypatch):
    config = tmp_path / "cxp.yaml"
    config.write_text("windows: [1h, 2h]\npartitions: 8\nweb_port: 7000\n")
    monkeypatch.setenv("CXP_CONFIG_FILE", str(config))
    monkeypatch.setenv("CXP_PARTITIONS", "6")
    settings = Settings()
    assert settings.partitions == 6  # environment wins
    assert settings.windows == ["1h", "2h"] and settings.web_port == 7000  # file beats defaults
    assert settings.window_ms == {"1h": 3_600_000, "2h": 7_200_000}
    assert settings.max_lateness == "7d"  # default


def test_comma_separated_windows_and_bad_values(monkeypatch):
    monkeypatch.setenv("CXP_WINDOWS", "1h,3d")
    assert Settings().windows == ["1h", "3d"]
    monkeypatch.setenv("CXP_WINDOWS", "1h,sometimes")
    with pytest.raises(ValueError):
        Settings()


def test_missing_config_file_names_the_file(monkeypatch):
    monkeypatch.setenv("CXP_CONFIG_FILE", "/nonexistent/cxp.yaml")
    with pytest.raises(FileNotFoundError, match="/nonexistent/cxp.yaml"):
        Settings()


def test_kafka_url():
    assert Settings(kafka_url="kafka://a:9092,b:9092").bootstrap_servers == "a:9092,b:9092"
    with pytest.raises(ValueError, match="CXP_KAFKA_URL"):
        Settings().bootstrap_servers


def test_configuration_doc_documents_every_setting():
    documented = set(re.findall(r"^\| `(CXP_[A-Z_]+)` \|", CONFIGURATION.read_text(), re.MULTILINE))
    assert {f"CXP_{name.upper()}" for name in Settings.model_fields} <= documented
