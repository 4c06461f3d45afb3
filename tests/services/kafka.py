"""A real Kafka-protocol broker (Tansu) per test session, on a free loopback port, stopped by PID."""
from __future__ import annotations

import pytest

from runtime.local.broker import LocalBroker


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    with LocalBroker(tmp_path_factory.mktemp("broker")) as running:
        yield running
