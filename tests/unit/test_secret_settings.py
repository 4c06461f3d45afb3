"""Secrets never shown (cxp config, configuration errors), ClickHouse credentials and TLS reach the
driver, and every name that goes into generated SQL or a Kafka name is checked at start-up."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pipeline.settings import SettingsError as ValidationError

from pipeline.secret_values import clickhouse_security, display_settings, mask_url
from pipeline.settings import Settings, SettingsError
from sinks.clickhouse.ddl import create_statements
from sinks.clickhouse.backend import NativeBackend

SECRETS = {"CXP_COLLECTOR_TOKENS": "collector-secret-1,collector-secret-2", "CXP_METRICS_TOKEN": "metrics-secret",
           "CXP_KAFKA_SASL_PASSWORD": "sasl-secret",
           "CXP_CLICKHOUSE_URL": "clickhouse://cx:clickhouse-secret@db:9000/cx?password=query-secret",
           "CXP_SCHEMA_REGISTRY_URL": "https://reg:registry-secret@registry:8081"}
SECRET_WORDS = ("collector-secret", "metrics-secret", "sasl-secret", "clickhouse-secret", "query-secret",
                "registry-secret")
HOSTILE = ["cx; DROP TABLE cx.events; --", "cx`", "cx.events", "1cx", "cx'", "cx\\", "c x", ""]


def cxp(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ.get("PATH", ""), "COLUMNS": "400", **env})


def test_mask_url():
    assert mask_url("clickhouse://u:p%40ss@h:9000/cx") == "clickhouse://u:***@h:9000/cx"
    assert mask_url("clickhouses://h:9440/cx?secure=1&password=x") == "clickhouses://h:9440/cx?secure=1&password=%2A%2A%2A"
    assert mask_url("kafka://a:9092") == "kafka://a:9092" and mask_url("clickhouse://u@h/cx") == "clickhouse://u@h/cx"


def test_display_settings_masks_every_secret(monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    shown = display_settings(Settings())
    assert not [word for word in SECRET_WORDS if word in repr(shown)]
    assert shown["CXP_COLLECTOR_TOKENS"] == "***"
    assert shown["CXP_CLICKHOUSE_URL"].startswith("clickhouse://cx:***@db:9000/cx")
    assert shown["CXP_METRICS_TOKEN_FILE"] == "None" and shown["CXP_WEB_PORT"] == "6066"


def test_cxp_config_shows_no_secret():
    result = cxp("config", env=SECRETS)
    assert result.returncode == 0, result.stderr
    assert "CXP_METRICS_TOKEN" in result.stdout and "clickhouse://cx:***@db" in result.stdout
    assert not [word for word in SECRET_WORDS if word in result.stdout + result.stderr]


def test_a_bad_setting_is_named_without_echoing_secrets():
    result = cxp("config", env={"CXP_CLICKHOUSE_URL": "http://cx:hunter2@db:8123/cx"})
    assert result.returncode == 2 and "CXP_CLICKHOUSE_URL" in result.stderr and "hunter2" not in result.stderr


@pytest.mark.parametrize("variable", ["CXP_CLICKHOUSE_DATABASE", "CXP_CLICKHOUSE_CLUSTER"])
@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_sql_identifiers_are_refused(variable, name):
    with pytest.raises(ValidationError, match="letters, digits and _"):
        Settings(**{variable[4:].lower(): name})


@pytest.mark.parametrize("name", HOSTILE[:2] + ["cx/events", "cx'"])
def test_hostile_database_in_the_clickhouse_url_is_refused(name):
    with pytest.raises(ValidationError, match="letters, digits and _"):
        Settings(clickhouse_url=f"clickhouse://db:9000/{name}")


@pytest.mark.parametrize("name", ["cx; DROP", "cx`", "../../etc/", "cx'", "c x"])
def test_hostile_topic_prefix_and_app_id_are_refused(name):
    for field in ("topic_prefix", "app_id"):
        with pytest.raises(ValidationError, match="Kafka names use only"):
            Settings(**{field: name})


def test_the_worker_refuses_to_start_on_a_hostile_identifier():
    for variable in ("CXP_CLICKHOUSE_DATABASE", "CXP_CLICKHOUSE_CLUSTER", "CXP_TOPIC_PREFIX"):
        result = cxp("worker", env={"CXP_KAFKA_URL": "kafka://127.0.0.1:1", variable: "cx; DROP TABLE cx.events; --"})
        assert result.returncode == 2, result.stderr
        assert "invalid configuration" in result.stderr and variable in result.stderr


def test_ddl_refuses_identifiers_even_when_called_directly():
    for name in HOSTILE:
        with pytest.raises(ValueError, match="letters, digits and _"):
            create_statements(name)
        with pytest.raises(ValueError, match="letters, digits and _"):
            create_statements("cx", name)


def test_clickhouse_password_file_and_tls_reach_the_driver(tmp_path):
    secret = tmp_path / "clickhouse-password"
    secret.write_text("p@ss:w/rd\n")
    (tmp_path / "ca.pem").write_text("a CA bundle; the driver reads it when it connects\n")
    settings = Settings(clickhouse_url="clickhouse://cx:in-url@db:9000/cx", clickhouse_password_file=secret,
                        clickhouse_secure=True, clickhouse_ca_file=tmp_path / "ca.pem")
    options = clickhouse_security(settings.clickhouse)
    assert options == {"secure": True, "password": "p@ss:w/rd", "ca_certs": str(tmp_path / "ca.pem")}
    connection = NativeBackend(settings.clickhouse.url, **options).client.connection  # connects lazily
    assert (connection.user, connection.password, connection.secure_socket) == ("cx", "p@ss:w/rd", True)
    assert connection.ssl_options["ca_certs"] == str(tmp_path / "ca.pem")
    plain = NativeBackend("clickhouse://cx:in%40url@db:9000/cx", **clickhouse_security(Settings().clickhouse)).client.connection
    assert (plain.password, plain.secure_socket) == ("in@url", False)
    assert NativeBackend("clickhouses://db:9440/cx").client.connection.secure_socket
    with pytest.raises(SettingsError, match="CXP_CLICKHOUSE_PASSWORD_FILE: cannot read"):
        Settings(clickhouse_password_file=tmp_path / "missing")
