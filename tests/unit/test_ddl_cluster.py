"""Cluster-mode DDL derived from the table definitions (executed for real in
tests/integration/test_clickhouse_cluster.py)."""
from __future__ import annotations

import re

import pytest
from pipeline.settings import SettingsError as ValidationError

from pipeline.settings import Settings
from pipeline.tables import TABLES, Table
from sinks.clickhouse.ddl import create, create_on_cluster, create_statements, missing_column_fixes
from sinks.clickhouse.backend import open_backend


def test_without_a_cluster_the_ddl_is_the_single_server_one():
    assert create_statements("cx") == create_statements("cx", None) == [
        "CREATE DATABASE IF NOT EXISTS cx", *(create(table, "cx") for table in TABLES.values())]
    assert not any(" ON CLUSTER " in statement or "Replicated" in statement for statement in create_statements("cx"))


def test_every_table_gets_a_replicated_local_table_and_a_distributed_one_with_the_same_columns():
    statements = create_statements("cx", "prod")
    assert statements[0] == "CREATE DATABASE IF NOT EXISTS cx ON CLUSTER prod"
    assert len(statements) == 1 + 2 * len(TABLES)
    for (local, distributed), table in zip(zip(statements[1::2], statements[2::2]), TABLES.values()):
        single = create(table, "cx")
        columns = single[single.index("("):single.index(") ENGINE")]
        assert f"cx.{table.name}_local ON CLUSTER prod {columns}" in local
        assert f"cx.{table.name} ON CLUSTER prod {columns}" in distributed
        engine = single.split(" ENGINE = ")[1]
        kind, arguments, rest = re.fullmatch(r"(\w+)\(([^)]*)\)(.*)", engine).groups()
        replication = f"'/clickhouse/tables/{{shard}}/cx/{table.name}', '{{replica}}'"
        assert local.endswith(f" ENGINE = Replicated{kind}({replication}{', ' + arguments if arguments else ''}){rest}")
        order_by = rest.split("ORDER BY ")[1].strip("()")
        assert distributed.endswith(f" ENGINE = Distributed(prod, cx, {table.name}_local, cityHash64({order_by}))")


def test_a_version_column_stays_the_last_engine_argument():
    table = Table("t", (("k", "String"), ("v", "Int64")), "ReplacingMergeTree(v) ORDER BY k")
    local, distributed = create_on_cluster(table, "db", "c")
    assert local.endswith("ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db/t', '{replica}', v) ORDER BY k")
    assert distributed.endswith("Distributed(c, db, t_local, cityHash64(k))")


def test_names_that_are_not_identifiers_and_engines_that_cannot_be_replicated_are_refused():
    with pytest.raises(ValueError, match="cluster"):
        create_statements("cx", "prod; DROP TABLE x")
    with pytest.raises(ValueError, match="MergeTree"):
        create_on_cluster(Table("t", (("k", "String"),), "Memory"), "db", "c")


def test_the_cluster_setting_takes_identifiers_only_and_chdb_has_no_cluster_mode(tmp_path):
    assert Settings(clickhouse_cluster="cx_cluster_1").clickhouse.cluster == "cx_cluster_1"
    assert Settings().clickhouse.cluster is None
    with pytest.raises(ValidationError):
        Settings(clickhouse_cluster="cx-cluster")
    with pytest.raises(ValueError, match="needs a server"):
        open_backend(None, tmp_path, cluster="cx_cluster")
    assert not (tmp_path / "clickhouse").exists()


def test_missing_columns_are_added_to_the_local_and_the_distributed_table():
    present = {(name, column) for name, table in TABLES.items() for column, _ in table.columns}
    assert missing_column_fixes("cx", present, "prod") == []
    present -= {("actions", "reason"), ("actions", "due_at")}
    assert missing_column_fixes("cx", present, "prod") == [
        f"ALTER TABLE cx.{name} ON CLUSTER prod ADD COLUMN `reason` {dict(TABLES['actions'].columns)['reason']}, "
        f"ADD COLUMN `due_at` {dict(TABLES['actions'].columns)['due_at']}" for name in ("actions_local", "actions")]
