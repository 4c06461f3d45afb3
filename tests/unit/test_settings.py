import re
from pathlib import Path

import pytest

from pipeline.config import Duration, duration_ms
from pipeline.settings import Settings, SettingsError

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


FUNNEL_WITHOUT_WINDOW = "funnels:\n  - name: signup\n    steps: [page_view, signup]\n"


@pytest.mark.parametrize("variable, value, message", [
    ("CXP_METRICS", "surveys,nps", r"^CXP_METRICS: unknown metric cores nps; use all, or some of surveys, "),
    ("CXP_METRICS", "segments", r"^CXP_METRICS: metric core 'segments' consumes SurveyAnswered, .* add surveys to"),
    ("CXP_METRICS", "all,surveys", r"^CXP_METRICS: use all alone"),
    ("CXP_LOG_LEVEL", "verbose", r"^CXP_LOG_LEVEL: Input should be 'debug', 'info', 'warning' or 'error'"),
    ("CXP_LOG_FORMAT", "xml", r"^CXP_LOG_FORMAT: Input should be 'json' or 'console'"),
    ("CXP_CHURN_MEDIUM", "0.6", r"^CXP_CHURN_MEDIUM \(0.6\) must not be above CXP_CHURN_HIGH \(0.5\)"),
    ("CXP_CHURN_INACTIVITY", "100d", r"^CXP_CHURN_INACTIVITY must be below CXP_CHURN_FORGET"),
    ("CXP_SINK_RETRY_BACKOFF", "20s", r"^CXP_SINK_RETRY_BACKOFF \(20s\) must not be above CXP_SINK_RETRY_MAX_BACKOFF"),
    ("CXP_COMPLAINT_SLA", "urgent=8h/1h,high=4h/24h,normal=24h/72h,low=72h/7d",
     r"^CXP_COMPLAINT_SLA: .*'urgent=8h/1h': the first-response target must not be above the resolution target"),
    ("CXP_WEB_PORT", "99999", r"^CXP_WEB_PORT: Input should be less than or equal to 65535"),
    ("CXP_WEB_PORT", "0", r"^CXP_WEB_PORT: Input should be greater than or equal to 1"),
    ("CXP_WINDOWS", "1h,60m", r"^CXP_WINDOWS: 1h, 60m: one window length listed twice"),
    ("CXP_ENGAGEMENT_WINDOWS", "1d,0s", r"^CXP_ENGAGEMENT_WINDOWS: must be above 0"),
    ("CXP_KAFKA_URL", "notaurl", r"^CXP_KAFKA_URL: 'notaurl' is not host:port"),
    ("CXP_SCHEMA_REGISTRY_URL", "registry:8081", r"^CXP_SCHEMA_REGISTRY_URL: must look like http://registry:8081"),
    ("CXP_PII_KEY", "short", r"^CXP_PII_KEY: the PII key has 5 bytes; it needs at least 16 bytes"),
    ("CXP_COLLECTOR_TOKENS_FILE", "/nonexistent/tokens", r"^CXP_COLLECTOR_TOKENS_FILE: cannot read /nonexistent/tokens"),
    ("CXP_KAFKA_SECURITY_PROTOCOL", "SASL_SSL", r"^CXP_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs CXP_KAFKA_SASL_USERNAME"),
    ("CXP_FUNNELS_FILE", "{funnels}", r"^CXP_FUNNELS_FILE: funnel 'signup': needs a conversion `window`"),
])
def test_every_bad_value_is_refused_when_the_settings_load_naming_its_variable(variable, value, message, monkeypatch,
                                                                               tmp_path):
    """What used to pass silently and fail later (or never): each one line, the variable first."""
    funnels = tmp_path / "funnels.yaml"
    funnels.write_text(FUNNEL_WITHOUT_WINDOW)
    monkeypatch.setenv(variable, value.format(funnels=funnels))
    with pytest.raises(SettingsError, match=message) as refused:
        Settings()
    assert "\n" not in str(refused.value)
    if variable == "CXP_PII_KEY":
        assert value not in str(refused.value)  # a secret is never echoed


def test_valid_forms_are_taken(monkeypatch):
    monkeypatch.setenv("CXP_KAFKA_URL", "localhost:9092")
    monkeypatch.setenv("CXP_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("CXP_METRICS", "surveys, segments")
    monkeypatch.setenv("CXP_TENANTS", "acme, globex")
    monkeypatch.setenv("CXP_SCHEMA_REGISTRY_URL", "https://user:pw@registry:8081")
    settings = Settings()
    assert settings.kafka.bootstrap_servers == "localhost:9092" and settings.log_level == "warning"
    assert settings.metrics == ["surveys", "segments"] and settings.stream.tenants == ["acme", "globex"]
    assert Settings(tenants="").stream.tenants == []  # empty: every tenant accepted


def test_config_file_typos_and_bad_yaml_name_the_variable(tmp_path):
    config = tmp_path / "cxp.yaml"
    config.write_text("kafka_ulr: kafka:9092\n")
    with pytest.raises(SettingsError, match=r"^CXP_KAFKA_ULR: not a setting; did you mean CXP_KAFKA_URL\?$"):
        Settings(config_file=config)
    config.write_text("windows: [1h\n")
    with pytest.raises(SettingsError, match=r"^CXP_CONFIG_FILE: .*cxp.yaml is not valid YAML"):
        Settings(config_file=config)


def test_section_checks_name_their_variables():
    from pipeline.metrics.churn import ChurnSettings

    assert ChurnSettings.env_name("high") == "CXP_CHURN_HIGH"
    assert Settings.sections()["kafka"].env_name("partitions") == "CXP_PARTITIONS"  # an alias outside the prefix
