"""Kafka security settings translated, in one place, for both Kafka clients of the project.

The worker talks to Kafka through Faust (aiokafka): :func:`faust_credentials` is its
``broker_credentials``. The SDK producer and the topic admin use kafka-python:
:func:`kafka_python_config` is the keyword arguments they add. Both come from the same
``kafka_*`` settings, so the clients cannot disagree. Combinations no broker could accept are refused when the
settings load (:class:`pipeline.settings.KafkaSettings`).
"""
from __future__ import annotations

import ssl
from typing import Any, Optional

import faust

from pipeline.secret_values import secret
from pipeline.settings import KafkaSettings


def sasl_password(kafka: KafkaSettings) -> Optional[str]:
    return secret(kafka.sasl_password, kafka.sasl_password_file, "kafka_sasl_password_file")


def ssl_context(kafka: KafkaSettings) -> Optional[ssl.SSLContext]:
    """A client TLS context that verifies the brokers (CA file, else the system's CAs), with the client
    certificate for mutual TLS if one is set; None without TLS."""
    if not kafka.uses_tls:
        return None
    cafile = str(kafka.ssl_cafile) if kafka.ssl_cafile else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    if kafka.ssl_certfile:
        context.load_cert_chain(str(kafka.ssl_certfile), str(kafka.ssl_keyfile))
    return context


def faust_credentials(kafka: KafkaSettings) -> Optional[faust.auth.Credentials]:
    """Faust's ``broker_credentials``: SASL (with TLS for SASL_SSL), TLS alone, or None for PLAINTEXT."""
    if kafka.uses_sasl:
        return faust.SASLCredentials(username=kafka.sasl_username, password=sasl_password(kafka),
                                     mechanism=kafka.sasl_mechanism, ssl_context=ssl_context(kafka))
    if kafka.uses_tls:
        return faust.SSLCredentials(ssl_context(kafka))
    return None


def kafka_python_config(kafka: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for kafka-python's KafkaProducer / KafkaAdminClient / KafkaConsumer."""
    config: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    if kafka.uses_sasl:
        config.update(sasl_mechanism=kafka.sasl_mechanism, sasl_plain_username=kafka.sasl_username,
                      sasl_plain_password=sasl_password(kafka))
    if kafka.uses_tls:
        config["ssl_context"] = ssl_context(kafka)
    return config
