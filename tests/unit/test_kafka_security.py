"""The kafka_* settings reach both Kafka clients: Faust/aiokafka (the worker) and kafka-python (the SDK
producer, the topic admin, every cxp command). Tansu has no SASL or TLS, so the clients are built and
inspected here rather than connected."""
from __future__ import annotations

import ssl
import subprocess

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaConnectionError

from pipeline.kafka_security import faust_credentials, kafka_python_config
from pipeline.settings import Settings, SettingsError


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """A self-signed CA and client certificate and key made by openssl, as an operator would have them."""
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=cxp-test",
                    "-keyout", folder / "client.key", "-out", folder / "client.pem"], check=True, capture_output=True)
    return folder


def faust_app(settings: Settings) -> faust.App:
    return faust.App("cxp-security-test", broker="kafka://localhost:9092", broker_credentials=faust_credentials(settings.kafka))


def test_plaintext_by_default():
    assert faust_credentials(Settings().kafka) is None
    assert kafka_python_config(Settings().kafka) == {"security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_over_tls_reaches_aiokafka_and_kafka_python(mechanism, certificates):
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism=mechanism, kafka_sasl_username="cx",
                        kafka_sasl_password="s3cret", kafka_ssl_cafile=certificates / "client.pem")
    app = faust_app(settings)
    # What Faust hands aiokafka for the consumer and the producer
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials)
    assert {k: auth[k] for k in ("security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password")} \
        == {"security_protocol": "SASL_SSL", "sasl_mechanism": mechanism, "sasl_plain_username": "cx",
            "sasl_plain_password": "s3cret"}
    assert auth["ssl_context"].verify_mode == ssl.CERT_REQUIRED and auth["ssl_context"].check_hostname
    assert app.producer._settings_auth()["sasl_plain_password"] == "s3cret"

    config = kafka_python_config(settings.kafka)
    assert config["security_protocol"] == "SASL_SSL" and config["sasl_mechanism"] == mechanism
    assert config["sasl_plain_username"] == "cx" and config["sasl_plain_password"] == "s3cret"
    assert config["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    for client in (KafkaProducer, KafkaAdminClient, KafkaConsumer):  # every key is one the client knows
        assert set(config) <= set(client.DEFAULT_CONFIG)


def test_sasl_password_from_a_file_and_plaintext_sasl(tmp_path):
    secret = tmp_path / "kafka-password"
    secret.write_text("from-file\n")
    settings = Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="cx",
                        kafka_sasl_password_file=secret)
    auth = credentials_to_aiokafka_auth(faust_app(settings).conf.broker_credentials)
    assert auth["security_protocol"] == "SASL_PLAINTEXT" and auth["sasl_plain_password"] == "from-file"
    assert auth["ssl_context"] is None
    assert kafka_python_config(settings.kafka)["sasl_plain_password"] == "from-file"
    assert "ssl_context" not in kafka_python_config(settings.kafka)


def test_mutual_tls_loads_the_client_certificate(certificates):
    settings = Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=certificates / "client.pem",
                        kafka_ssl_certfile=certificates / "client.pem", kafka_ssl_keyfile=certificates / "client.key")
    auth = credentials_to_aiokafka_auth(faust_app(settings).conf.broker_credentials)
    assert auth["security_protocol"] == "SSL"
    # the CA file was loaded into the context the brokers are verified with
    assert [c["subject"] for c in auth["ssl_context"].get_ca_certs()] == [((("commonName", "cxp-test"),),)]
    assert kafka_python_config(settings.kafka)["security_protocol"] == "SSL"
    with pytest.raises(ssl.SSLError):  # a key that does not belong to the certificate is refused
        kafka_python_config(settings.replace(kafka_ssl_keyfile=certificates / "client.pem").kafka)


@pytest.mark.parametrize("overrides, message", [
    ({"kafka_security_protocol": "SASL_SSL"}, "CXP_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs CXP_KAFKA_SASL_USERNAME"),
    ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "cx"}, "CXP_KAFKA_SASL_PASSWORD"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_certfile": "{certs}/client.pem"}, "CXP_KAFKA_SSL_KEYFILE"),
    ({"kafka_ssl_cafile": "{certs}/client.pem"}, "use SSL or SASL_SSL"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/nonexistent/ca.pem"},
     "CXP_KAFKA_SSL_CAFILE: cannot read /nonexistent/ca.pem"),
    ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "cx",
      "kafka_sasl_password_file": "/nonexistent/pw"}, "CXP_KAFKA_SASL_PASSWORD_FILE: cannot read /nonexistent/pw"),
])
def test_incomplete_settings_are_refused_when_they_load(overrides, message, certificates):
    """Before any client is built: every command refuses them up front, naming the variables."""
    with pytest.raises(SettingsError, match=message):
        Settings(**{name: value.format(certs=certificates) for name, value in overrides.items()})


def test_unknown_protocol_or_mechanism_is_a_settings_error():
    with pytest.raises(ValueError, match="CXP_KAFKA_SECURITY_PROTOCOL"):
        Settings(kafka_security_protocol="SASL")
    with pytest.raises(ValueError, match="CXP_KAFKA_SASL_MECHANISM"):
        Settings(kafka_sasl_mechanism="GSSAPI")


class Refusing:
    """Stands in for a kafka-python client class: records its keyword arguments, then fails to connect."""

    calls: list[dict] = []

    def __init__(self, **config):
        Refusing.calls.append(config)
        raise KafkaConnectionError("no broker here")


def test_topic_admin_and_cli_producer_are_built_with_the_security_settings(monkeypatch):
    import runtime.cli
    import pipeline.producer
    import runtime.topics
    from pipeline.producer import ProducerError

    ensure_topics = runtime.topics.ensure_topics
    monkeypatch.setattr(runtime.topics, "KafkaAdminClient", Refusing)
    monkeypatch.setattr(pipeline.producer, "KafkaProducer", Refusing)
    Refusing.calls = []
    settings = Settings(kafka_url="kafka://localhost:1", kafka_security_protocol="SASL_PLAINTEXT",
                        kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="cx", kafka_sasl_password="pw")
    with pytest.raises(RuntimeError, match="could not create"):
        ensure_topics(settings, timeout_s=0.2)
    monkeypatch.setattr(runtime.topics, "ensure_topics", lambda settings: {})  # cxp simulate/produce's producer
    with pytest.raises(ProducerError):
        runtime.cli._producer(settings)
    assert len(Refusing.calls) == 2
    assert all(call["sasl_mechanism"] == "SCRAM-SHA-512" and call["sasl_plain_password"] == "pw"
               and call["security_protocol"] == "SASL_PLAINTEXT" for call in Refusing.calls)
