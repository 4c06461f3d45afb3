"""deploy/grafana/queries.py: the dashboard queries as Grafana and grafana-clickhouse-datasource would send them."""
from __future__ import annotations

import pytest

from deploy.grafana.queries import clickhouse_sql, promql


def test_promql_variables_become_the_regex_grafana_sends():
    expr = 'sum(rate(x{tenant=~"$tenant", window=~"${window}"}[$__rate_interval]))'
    assert promql(expr, {"tenant": ["acme", "a.b"], "window": ["24h"]}) == \
        r'sum(rate(x{tenant=~"acme|a\.b", window=~"24h"}[1m]))'


def test_clickhouse_macros_expand_as_the_plugin_documents():
    sql = ("SELECT intDiv(toUInt32(ts), $__interval_s) AS t FROM cx.m FINAL WHERE $__timeFilter(ts) "
           "AND tenant IN (${tenant:singlequote}) AND ts BETWEEN $__fromTime AND $__toTime")
    assert clickhouse_sql(sql, {"tenant": ["acme", "o'neil"]}, from_s=100, to_s=200, interval_s=30) == (
        "SELECT intDiv(toUInt32(ts), 30) AS t FROM cx.m FINAL WHERE ts >= toDateTime(100) AND ts <= toDateTime(200) "
        "AND tenant IN ('acme','o\\'neil') AND ts BETWEEN toDateTime(100) AND toDateTime(200)")


def test_a_variable_left_unfilled_is_an_error():
    with pytest.raises(ValueError, match="left in"):
        promql('x{tenant=~"$tenant", segment="$segment"}', {"tenant": ["acme"]})

