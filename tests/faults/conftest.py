"""Fixtures of the fault suite: a Stage per test on the shared broker and ClickHouse server, and servers of
its own for the tests that stop, freeze or restart them (the shared ones must never be)."""
from __future__ import annotations

import uuid

import pytest

pytest.register_assert_rewrite("tests.faults.harness")  # its asserts show diffs too; before it is imported

from runtime.local.broker import LocalBroker  # noqa: E402
from tests.faults.harness import Stage  # noqa: E402
from tests.services.clickhouse import RestartableClickHouse  # noqa: E402


@pytest.fixture
def stage(broker, clickhouse_url, tmp_path):
    """Fresh topics, consumer group and database on the shared servers; its workers stopped at the end."""
    world = Stage(broker.url, clickhouse_url, tmp_path)
    yield world
    world.stop_all()


@pytest.fixture(scope="module")
def own_clickhouse(tmp_path_factory):
    """A ClickHouse server this module may stop, freeze and restart on the same data folder and ports."""
    server = RestartableClickHouse(tmp_path_factory.mktemp("own-clickhouse"))
    yield server
    server.thaw()  # a stopped process cannot act on SIGTERM
    server.stop()


@pytest.fixture
def own_broker(tmp_path):
    """A Tansu broker this test may stop and start again on the same port."""
    with LocalBroker(tmp_path / "own-broker") as running:
        yield running


@pytest.fixture
def own_stage(own_clickhouse, broker, tmp_path):
    """A Stage whose database lives on own_clickhouse, running again if an earlier test left it down."""
    if own_clickhouse.process.poll() is not None:
        own_clickhouse.restart()
    world = Stage(broker.url, own_clickhouse.url(f"cx_own_{uuid.uuid4().hex[:10]}"), tmp_path)
    yield world
    own_clickhouse.thaw()
    world.stop_all()
