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
from pipeline.settings import Settings


def sasl_password(settings: Settings) -> Optional[str]:
    return secret(settings.kafka_sasl_password, settings.kafka_sasl_password_file, "kafka_sasl_password_file")


def _uses_sasl(settings: Settings) -> bool:
    return settings.kafka_security_protocol.startswith("SASL_")


def _uses_tls(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SSL", "SASL_SSL")


def check(settings: Settings) -> None:
    """Raise ConfigurationError naming the missing setting for a combination no broker could accept."""
    if _uses_sasl(settings) and not (settings.kafka_sasl_username and sasl_password(settings)):
        raise ConfigurationError(f"kafka_security_protocol {settings.kafka_security_protocol} needs "
                                 "CXP_KAFKA_SASL_USERNAME and CXP_KAFKA_SASL_PASSWORD (or CXP_KAFKA_SASL_PASSWORD_FILE)")
    if (settings.kafka_ssl_certfile is None) != (settings.kafka_ssl_keyfile is None):
        raise ConfigurationError("a Kafka client certificate needs both CXP_KAFKA_SSL_CERTFILE and "
                                 "CXP_KAFKA_SSL_KEYFILE")
    if not _uses_tls(settings) and (settings.kafka_ssl_cafile or settings.kafka_ssl_certfile):
        raise ConfigurationError(f"CXP_KAFKA_SSL_* files are set but kafka_security_protocol is "
                                 f"{settings.kafka_security_protocol}: use SSL or SASL_SSL")


def ssl_context(settings: Settings) -> Optional[ssl.SSLContext]:
    """A client TLS context that verifies the brokers (CA file, else the system's CAs), with the client
    certificate for mutual TLS if one is set; None without TLS."""
    if not _uses_tls(settings):
        return None
    cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    if settings.kafka_ssl_certfile:
        context.load_cert_chain(str(settings.kafka_ssl_certfile), str(settings.kafka_ssl_keyfile))
    return context


def faust_credentials(settings: Settings) -> Optional[faust.auth.Credentials]:
    """Faust's ``broker_credentials``: SASL (with TLS for SASL_SSL), TLS alone, or None for PLAINTEXT."""
    check(settings)
    if _uses_sasl(settings):
        return faust.SASLCredentials(username=settings.kafka_sasl_username, password=sasl_password(settings),
                                     mechanism=settings.kafka_sasl_mechanism, ssl_context=ssl_context(settings))
    if _uses_tls(settings):
        return faust.SSLCredentials(ssl_context(settings))
    return None


def kafka_python_config(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for kafka-python's KafkaProducer / KafkaAdminClient / KafkaConsumer."""
    check(settings)
    config: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if _uses_sasl(settings):
        config.update(sasl_mechanism=settings.kafka_sasl_mechanism, sasl_plain_username=settings.kafka_sasl_username,
                      sasl_plain_password=sasl_password(settings))
    if _uses_tls(settings):
        config["ssl_context"] = ssl_context(settings)
    return config
