import re
from pathlib import Path

import pytest

from pipeline.config import Duration, duration_ms
from pipeline.settings import Settings

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
    assert settings.kafka.partitions == 6  # environment wins
    assert settings.stream.windows == [Duration("1h"), Duration("2h")] and settings.web.port == 7000  # file beats defaults
    assert settings.stream.window_ms == {"1h": 3_600_000, "2h": 7_200_000}
    assert settings.stream.max_lateness.ms == 7 * 86_400_000 and str(settings.stream.max_lateness) == "7d"  # default


def test_comma_separated_windows_and_bad_values(monkeypatch):
    monkeypatch.setenv("CXP_WINDOWS", "1h,3d")
    assert list(Settings().stream.window_ms) == ["1h", "3d"]
    monkeypatch.setenv("CXP_WINDOWS", "1h,sometimes")
    with pytest.raises(ValueError):
        Settings()


def test_missing_config_file_names_the_file(monkeypatch):
    monkeypatch.setenv("CXP_CONFIG_FILE", "/nonexistent/cxp.yaml")
    with pytest.raises(FileNotFoundError, match="/nonexistent/cxp.yaml"):
        Settings()


def test_kafka_url():
    assert Settings(kafka_url="kafka://a:9092,b:9092").kafka.bootstrap_servers == "a:9092,b:9092"
    assert Settings(kafka_url="a:9092, b:9092").kafka.bootstrap_servers == "a:9092,b:9092"  # the plain form too
    with pytest.raises(ValueError, match="CXP_KAFKA_URL"):
        Settings().kafka.bootstrap_servers
    with pytest.raises(ValueError, match="is not host:port"):
        Settings(kafka_url="notaurl")


def test_clickhouse_alt_hosts(monkeypatch):
    cluster = dict(clickhouse_url="clickhouse://cxp@ch-1:9000/cx", clickhouse_cluster="cx_cluster")
    monkeypatch.setenv("CXP_CLICKHOUSE_ALT_HOSTS", "ch-2:9000, ch-3:9001")
    assert Settings(**cluster).clickhouse.alt_hosts == ["ch-2:9000", "ch-3:9001"]
    monkeypatch.setenv("CXP_CLICKHOUSE_ALT_HOSTS", "ch-2")
    with pytest.raises(ValueError, match="CXP_CLICKHOUSE_ALT_HOSTS: 'ch-2' is not host:port"):
        Settings(**cluster)
    monkeypatch.setenv("CXP_CLICKHOUSE_ALT_HOSTS", "ch-2:9000")
    with pytest.raises(ValueError, match="CXP_CLICKHOUSE_ALT_HOSTS needs CXP_CLICKHOUSE_URL and CXP_CLICKHOUSE_CLUSTER"):
        Settings(clickhouse_url=cluster["clickhouse_url"])  # separate servers would split the tables
    monkeypatch.delenv("CXP_CLICKHOUSE_ALT_HOSTS")
    assert Settings(**cluster).clickhouse.alt_hosts == []


def test_sections_keep_the_flat_variable_names(monkeypatch):
    """Every setting is one CXP_ variable, whatever section holds it; errors name that variable."""
    monkeypatch.setenv("CXP_CHURN_HIGH", "0.6")
    monkeypatch.setenv("CXP_APP_ID", "other-group")
    monkeypatch.setenv("CXP_SINK_FLUSH_INTERVAL", "2s")
    settings = Settings(clickhouse_timeout="4s")
    assert settings.churn.high == 0.6 and settings.kafka.app_id == "other-group"
    assert settings.sink.flush_interval.seconds == 2.0 and settings.clickhouse.timeout.seconds == 4.0
    assert settings.replace(web_port=7001).web.port == 7001 and settings.replace(web_port=7001).churn.high == 0.6
    variables = settings.flat()
    assert variables["CXP_CHURN_HIGH"][0] == 0.6 and variables["CXP_APP_ID"][0] == "other-group"
    assert Settings.variable(("churn", "high")) == "CXP_CHURN_HIGH" and Settings.variable(("kafka", "app_id")) == "CXP_APP_ID"
    assert Settings.variable(("log_level",)) == "CXP_LOG_LEVEL"


def test_configuration_doc_documents_every_setting():
    documented = set(re.findall(r"^\| `(CXP_[A-Z_]+)` \|", CONFIGURATION.read_text(), re.MULTILINE))
    assert set(Settings().flat()) <= documented
