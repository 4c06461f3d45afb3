"""Creating the topics when the broker does not answer: what is waited for is logged while it lasts, and the
final error names CXP_KAFKA_URL. Nothing listens on the port, so no broker is needed."""
from __future__ import annotations

import logging

import pytest

from pipeline.settings import Settings
from runtime.local.processes import free_port
from runtime.topics import ensure_topics


def test_waiting_for_an_unreachable_broker_is_logged_and_the_error_names_the_variable(caplog):
    address = f"127.0.0.1:{free_port()}"
    with caplog.at_level(logging.WARNING, logger="cxp.topics"), \
            pytest.raises(RuntimeError, match=rf"is CXP_KAFKA_URL \({address}\) its address\?"):
        ensure_topics(Settings(kafka_url=address), timeout_s=3)
    waits = [record for record in caplog.records if record.name == "cxp.topics"]
    assert waits, "no log line while waiting for the broker"
    for record in waits:
        assert record.levelname == "WARNING" and record.kafka_url == address
        assert f"waiting for Kafka at {address} (CXP_KAFKA_URL)" in record.getMessage()
        assert "retrying for" in record.getMessage() and record.gives_up_in_s <= 3
