"""Kafka security settings translated, in one place, for both Kafka clients of the project.

The worker talks to Kafka through Faust (aiokafka): :func:`faust_credentials` is its
``broker_credentials``. The SDK producer and the topic admin use kafka-python:
:func:`kafka_python_config` is the keyword arguments they add. Both come from the same
``kafka_*`` settings, so the clients cannot disagree.
"""
from __future__ import annotations

import ssl
from typing import Any, Optional

import faust

from pipeline.secret_values import ConfigurationError, secret
from pipeline.settings import KafkaSettings


def sasl_password(kafka: KafkaSettings) -> Optional[str]:
    return secret(kafka.sasl_password, kafka.sasl_password_file, "kafka_sasl_password_file")


def _uses_sasl(kafka: KafkaSettings) -> bool:
    return kafka.security_protocol.startswith("SASL_")


def _uses_tls(kafka: KafkaSettings) -> bool:
    return kafka.security_protocol in ("SSL", "SASL_SSL")


def check(kafka: KafkaSettings) -> None:
    """Raise ConfigurationError naming the missing setting for a combination no broker could accept."""
    if _uses_sasl(kafka) and not (kafka.sasl_username and sasl_password(kafka)):
        raise ConfigurationError(f"kafka_security_protocol {kafka.security_protocol} needs "
                                 "CXP_KAFKA_SASL_USERNAME and CXP_KAFKA_SASL_PASSWORD (or CXP_KAFKA_SASL_PASSWORD_FILE)")
    if (kafka.ssl_certfile is None) != (kafka.ssl_keyfile is None):
        raise ConfigurationError("a Kafka client certificate needs both CXP_KAFKA_SSL_CERTFILE and "
                                 "CXP_KAFKA_SSL_KEYFILE")
    if not _uses_tls(kafka) and (kafka.ssl_cafile or kafka.ssl_certfile):
        raise ConfigurationError(f"CXP_KAFKA_SSL_* files are set but kafka_security_protocol is "
                                 f"{kafka.security_protocol}: use SSL or SASL_SSL")


def ssl_context(kafka: KafkaSettings) -> Optional[ssl.SSLContext]:
    """A client TLS context that verifies the brokers (CA file, else the system's CAs), with the client
    certificate for mutual TLS if one is set; None without TLS."""
    if not _uses_tls(kafka):
        return None
    cafile = str(kafka.ssl_cafile) if kafka.ssl_cafile else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    if kafka.ssl_certfile:
        context.load_cert_chain(str(kafka.ssl_certfile), str(kafka.ssl_keyfile))
    return context


def faust_credentials(kafka: KafkaSettings) -> Optional[faust.auth.Credentials]:
    """Faust's ``broker_credentials``: SASL (with TLS for SASL_SSL), TLS alone, or None for PLAINTEXT."""
    check(kafka)
    if _uses_sasl(kafka):
        return faust.SASLCredentials(username=kafka.sasl_username, password=sasl_password(kafka),
                                     mechanism=kafka.sasl_mechanism, ssl_context=ssl_context(kafka))
    if _uses_tls(kafka):
        return faust.SSLCredentials(ssl_context(kafka))
    return None


def kafka_python_config(kafka: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for kafka-python's KafkaProducer / KafkaAdminClient / KafkaConsumer."""
    check(kafka)
    config: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    if _uses_sasl(kafka):
        config.update(sasl_mechanism=kafka.sasl_mechanism, sasl_plain_username=kafka.sasl_username,
                      sasl_plain_password=sasl_password(kafka))
    if _uses_tls(kafka):
        config["ssl_context"] = ssl_context(kafka)
    return config
