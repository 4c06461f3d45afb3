"""The CREATE and ALTER statements of the tables of :mod:`pipeline.tables`, for one server or a cluster."""
from __future__ import annotations

import re
from typing import Optional

from pipeline.config import check_identifier
from pipeline.tables import TABLES, Table


def create(table: Table, database: str) -> str:
    """The table on one server."""
    return f"CREATE TABLE IF NOT EXISTS {database}.{table.name} (\n  {_columns(table)}\n) ENGINE = {table.engine}"


def create_on_cluster(table: Table, database: str, cluster: str) -> list[str]:
    """The cluster form: ``<name>_local``, the same engine replicated (one ZooKeeper path per shard,
    a replica per server from the ``{shard}``/``{replica}`` macros), and a Distributed table with the
    contract name over it. The sharding key hashes the sorting key, so a replayed row goes to the
    shard that holds its original and FINAL collapses the two there."""
    engine = re.fullmatch(r"(\w*MergeTree)\(([^)]*)\)(.*ORDER BY (.+))", table.engine)
    if not engine:
        raise ValueError(f"table {table.name}: cluster mode needs a *MergeTree engine with ORDER BY, "
                         f"got {table.engine!r}")
    kind, arguments, rest, order_by = engine.groups()
    replication = [f"'/clickhouse/tables/{{shard}}/{database}/{table.name}'", "'{replica}'"]
    replicated = f"Replicated{kind}({', '.join(replication + ([arguments] if arguments else []))}){rest}"
    shard_key = order_by[1:-1] if order_by.startswith("(") and order_by.endswith(")") else order_by
    local, distributed = table_names(table, cluster)
    head = f"CREATE TABLE IF NOT EXISTS {database}.{{}} ON CLUSTER {cluster}"
    return [f"{head.format(local)} (\n  {_columns(table)}\n) ENGINE = {replicated}",
            f"{head.format(distributed)} (\n  {_columns(table)}\n) ENGINE = "
            f"Distributed({cluster}, {database}, {local}, cityHash64({shard_key}))"]


def table_names(table: Table, cluster: Optional[str] = None) -> list[str]:
    """The tables that hold ``table``: itself on one server; on a cluster its ``_local`` table and the
    Distributed table with the contract name."""
    return [table.name] if cluster is None else [f"{table.name}_local", table.name]


def _columns(table: Table) -> str:
    return ",\n  ".join(f"`{name}` {kind}" for name, kind in table.columns)


def create_statements(database: str = "cx", cluster: Optional[str] = None) -> list[str]:
    """CREATE DATABASE and every CREATE TABLE, all IF NOT EXISTS (safe to run on every start). With a
    cluster, all of them ON CLUSTER, each table as a replicated ``_local`` table plus a Distributed one."""
    for what, name in (("ClickHouse database name", database), ("ClickHouse cluster name", cluster)):
        if name is not None:
            check_identifier(what, name)
    if cluster is None:
        return [f"CREATE DATABASE IF NOT EXISTS {database}"] + [create(table, database) for table in TABLES.values()]
    return [f"CREATE DATABASE IF NOT EXISTS {database} ON CLUSTER {cluster}"] + [
        statement for table in TABLES.values() for statement in create_on_cluster(table, database, cluster)]


def missing_column_fixes(database: str, present: set[tuple[str, str]], cluster: Optional[str] = None) -> list[str]:
    """The ALTER statements that add the columns this version writes and tables created by an older
    version lack; ``present`` holds (table, column) as ``system.columns`` lists them. CREATE TABLE IF
    NOT EXISTS leaves such a table as it is, and every insert into it would fail."""
    fixes = []
    for table in TABLES.values():
        missing = [(name, kind) for name, kind in table.columns if (table.name, name) not in present]
        names = table_names(table, cluster)
        on_cluster = "" if cluster is None else f" ON CLUSTER {cluster}"
        fixes += [f"ALTER TABLE {database}.{name}{on_cluster} "
                  + ", ".join(f"ADD COLUMN `{column}` {kind}" for column, kind in missing)
                  for name in names if missing]
    return fixes
