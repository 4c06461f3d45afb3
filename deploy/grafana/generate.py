"""Write the Grafana dashboards as JSON, built with grafana-foundation-sdk.

    python -m deploy.grafana.generate [--out deploy/grafana/dashboards]

The JSON files are committed (Grafana provisions them from deploy/grafana/dashboards); a unit test
fails when they differ from what this module writes, so edit this file and run it again.

Data sources: every panel, target and query variable names its data source through a datasource template
variable (`${ds_prometheus}`, `${ds_clickhouse}`), never by uid. That is the one scheme that works both ways a
dashboard gets into Grafana: file provisioning loads the JSON as it is (it does not evaluate `__inputs`, so a
panel holding `${DS_PROMETHEUS}` would stay broken), and an import maps `__inputs` onto the variables'
defaults. Hence two copies of each dashboard:
  dashboards/  provisioned (provisioning/dashboards): the variables default to the uids of
               provisioning/datasources/datasources.yml;
  import/      Grafana's export-for-sharing form (Dashboards > New > Import): `__inputs` asks for one data
               source per type and becomes the variables' default; `__requires` names Grafana and the plugins.
A user can switch either variable on the dashboard. Each dashboard links to the others, and ends with a
"Recording rules" row that lists the rules of deploy/prometheus/recording_rules.yml its panels read and
flags any that Prometheus is not recording (deploy/grafana/rules.py).
PromQL reads the fleet-wide recording rules of deploy/prometheus/recording_rules.yml where one exists
(ratios computed after summing counts over workers); ClickHouse SQL (grafana-clickhouse-datasource)
gives history and exact percentiles, in the dialect ClickHouse 18.16 accepts.
"""
from __future__ import annotations

import argparse
import itertools
import json
import string
from dataclasses import dataclass
from pathlib import Path

import yaml

from grafana_foundation_sdk.builders import bargauge, common, dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import BigValueColorMode, BigValueTextMode, LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync, DashboardLinkType, DataSourceRef, DynamicConfigValue, Threshold, ThresholdsMode,
    ValueMap, ValueMappingResult, VariableOption, VariableRefresh, VariableSort)

from deploy.grafana.rules import metric_names, missing_rule_expr, recording_rules

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"  # provisioned
IMPORT_OUT = HERE / "import"  # for Grafana's import
PROVISIONED_SOURCES = HERE / "provisioning" / "datasources" / "datasources.yml"
COMPOSE = HERE.parent / "docker-compose.yml"  # its Grafana image is the version the dashboards are made for


@dataclass(frozen=True)
class Source:
    """A data source type the dashboards read, always through the datasource template variable ``variable``."""
    variable: str
    plugin_id: str
    plugin_name: str
    plugin_version: str  # for __requires: the plugin version the queries are written for

    @property
    def ref(self) -> DataSourceRef:
        return DataSourceRef(type_val=self.plugin_id, uid=f"${{{self.variable}}}")

    @property
    def input_name(self) -> str:
        """The __inputs entry an import asks for (Grafana's exporter names them DS_<NAME>)."""
        return "DS_" + self.variable.removeprefix("ds_").upper()


PROMETHEUS_SOURCE = Source("ds_prometheus", "prometheus", "Prometheus", "1.0.0")
CLICKHOUSE_SOURCE = Source("ds_clickhouse", "grafana-clickhouse-datasource", "ClickHouse", "4.0.0")
SOURCES = (PROMETHEUS_SOURCE, CLICKHOUSE_SOURCE)
PROMETHEUS = PROMETHEUS_SOURCE.ref
PANEL_NAMES = {"timeseries": "Time series", "stat": "Stat", "bargauge": "Bar gauge", "table": "Table"}  # __requires
CLICKHOUSE = CLICKHOUSE_SOURCE.ref
TENANT = 'tenant=~"$tenant"'
TENANT_WINDOW = 'tenant=~"$tenant", window=~"$window"'
TENANTS_SQL = "tenant IN (${tenant:singlequote})"
# Shares of a cohort active in weeks +1..+8, NULL until that week is over (cohort_week is its Monday).
RETENTION_WEEKS = ",\n       ".join(
    f"if(toUInt32(cohort_week) + {k + 1} * 604800 <= toUInt32(now()), round(countIf(bitTest(active_weeks, {k})) / count(), "
    f"3), NULL) AS week_{k}" for k in range(1, 9))
LAST_VALUE = common.ReduceDataOptions().calcs(["lastNotNull"])
LEGEND = common.VizLegendOptions().show_legend(True).display_mode(LegendDisplayMode.LIST).placement(
    LegendPlacement.BOTTOM)


class ClickHouseQuery(cogvariants.Dataquery):
    """A grafana-clickhouse-datasource (v4) SQL target; the SDK has no types for this plugin.
    format: 0 = time series, 1 = table (the plugin's Format enum)."""

    def __init__(self, sql: str, time_series: bool):
        self.sql, self.time_series, self.ref_id = sql, time_series, ""

    def to_json(self) -> dict[str, object]:
        return {"datasource": CLICKHOUSE.to_json(), "editorType": "sql", "format": 0 if self.time_series else 1,
                "queryType": "timeseries" if self.time_series else "table", "rawSql": self.sql, "refId": self.ref_id}


class ClickHouseSQL(cogbuilder.Builder[ClickHouseQuery]):
    def __init__(self, sql: str, time_series: bool = False):
        self._internal = ClickHouseQuery(sql, time_series)

    def ref_id(self, ref_id: str) -> "ClickHouseSQL":
        self._internal.ref_id = ref_id
        return self

    def build(self) -> ClickHouseQuery:
        return self._internal


def prom(expr: str, legend: str, instant: bool = False) -> prometheus.Dataquery:
    query = prometheus.Dataquery().expr(expr).legend_format(legend).datasource(PROMETHEUS)
    return query.instant() if instant else query.range()


def sql(text: str, time_series: bool = False) -> ClickHouseSQL:
    return ClickHouseSQL(text.strip(), time_series)


def ref_ids():
    """A, B, ..., Z, AA, AB, ...: Grafana's refIds, as many as a panel has targets."""
    for length in itertools.count(1):
        for letters in itertools.product(string.ascii_uppercase, repeat=length):
            yield "".join(letters)


def with_targets(panel, targets, width: int, height: int, description: str):
    """Targets get refIds A, B, ...; every panel names its data source (Prometheus unless all SQL)."""
    for ref_id, target in zip(ref_ids(), targets):
        panel = panel.with_target(target.ref_id(ref_id))
    source = CLICKHOUSE if all(isinstance(t, ClickHouseSQL) for t in targets) else PROMETHEUS
    panel = panel.datasource(source).span(width).height(height)
    return panel.description(description) if description else panel


def series(title: str, *targets, unit: str = "short", width: int = 8, height: int = 8, description: str = ""):
    panel = timeseries.Panel().title(title).unit(unit).fill_opacity(10).line_width(1).legend(LEGEND)
    return with_targets(panel, targets, width, height, description)


def band(title: str, value: str, margin: str, legend: str, unit: str = "short", width: int = 8):
    """The value with dashed upper and lower bounds (value ± margin)."""
    dashed = [DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
              DynamicConfigValue(id_val="custom.fillOpacity", value=0)]
    panel = series(title, prom(value, legend), prom(f"{value} + {margin}", f"{legend} upper"),
                   prom(f"{value} - {margin}", f"{legend} lower"), unit=unit, width=width,
                   description="Dashed: the 95 % margin of error (upper and lower bound).")
    return panel.override_by_query("B", dashed).override_by_query("C", dashed)


def single(title: str, *targets, unit: str = "short", width: int = 4, height: int = 8, description: str = ""):
    panel = stat.Panel().title(title).unit(unit).reduce_options(LAST_VALUE)
    return with_targets(panel, targets, width, height, description)


def bars(title: str, *targets, unit: str = "short", width: int = 8, height: int = 8, description: str = ""):
    panel = bargauge.Panel().title(title).unit(unit).reduce_options(LAST_VALUE)
    return with_targets(panel, targets, width, height, description)


def grid(title: str, *targets, width: int = 12, height: int = 8, description: str = ""):
    return with_targets(table.Panel().title(title).show_header(True), targets, width, height, description)


def variable(name: str, label: str, query: str, default: str, sort: VariableSort):
    """A multi-value Prometheus label_values variable; default "$__all" selects All."""
    shown = "All" if default == "$__all" else default
    return (dashboard.QueryVariable(name).label(label).datasource(PROMETHEUS)
            .query({"qryType": 1, "query": query, "refId": name}).refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .include_all(True).multi(True).sort(sort)
            .current(VariableOption(selected=True, text=[shown], value=[default])))


def new_dashboard(uid: str, title: str, description: str, tags: list[str]) -> dashboard.Dashboard:
    return (dashboard.Dashboard(title).uid(uid).description(description).tags(["cx-pipeline", *tags])
            .timezone("browser").editable().tooltip(DashboardCursorSync.CROSSHAIR).refresh("30s")
            .time("now-24h", "now"))


def cx_overview() -> dashboard.Dashboard:
    histogram = "histogram_quantile({q}, sum by (tenant, {by}le) (rate({name}_bucket{{{sel}}}[{range}])))"

    def quantiles(name: str, by: str, range_: str, legend: str):
        return [prom(histogram.format(q=q, by=by, name=name, sel=TENANT, range=range_), f"p{round(q * 100)} {legend}")
                for q in (0.5, 0.9)]

    return (
        new_dashboard("cx-overview", "cx-pipeline — CX overview",
                      "Customer-experience signals: surveys, segments, funnels, churn risk, engagement, revenue, "
                      "cart abandonment, complaints and follow-up actions. Ratios are fleet-wide recording rules over counts summed across "
                      "workers; ClickHouse panels read the stored rows for history and exact percentiles.",
                      ["customer-experience"])
        .with_variable(variable("tenant", "Tenant", "label_values(cx_survey_responses, tenant)", "$__all",
                                VariableSort.ALPHABETICAL_ASC))
        .with_variable(variable("window", "Window", 'label_values(cx_survey_responses{tenant=~"$tenant"}, window)',
                                "24h", VariableSort.DISABLED))
        .with_row(dashboard.Row("Surveys"))
        .with_panel(band("NPS ± 95 % margin of error", f"tenant_window:cx_nps:score{{{TENANT_WINDOW}}}",
                         f"tenant_window:cx_nps_margin_of_error:points{{{TENANT_WINDOW}}}", "{{tenant}} {{window}}"))
        .with_panel(series("CSAT", prom(f"tenant_window:cx_csat:ratio{{{TENANT_WINDOW}}}", "{{tenant}} {{window}}"),
                           unit="percentunit"))
        .with_panel(series("CES (mean effort, 1–7)",
                           prom(f"tenant_window:cx_ces:mean{{{TENANT_WINDOW}}}", "{{tenant}} {{window}}")))
        .with_panel(series("NPS history (ClickHouse metric_snapshots)", sql(f"""
SELECT time, tenant, `window`, sum(nps * answers) / sum(answers) AS nps
FROM (
    SELECT toDateTime(intDiv(toUInt32(ts), $__interval_s) * $__interval_s) AS time, tenant, `window`, partitions,
           argMax(value, ts) AS nps, argMax(n, ts) AS answers
    FROM cx.metric_snapshots FINAL
    WHERE metric = 'nps' AND `window` IN (${{window:singlequote}}) AND {TENANTS_SQL} AND $__timeFilter(ts)
    GROUP BY time, tenant, `window`, partitions
)
GROUP BY time, tenant, `window`
ORDER BY time""", time_series=True), width=12,
                           description="Every worker writes its current values over the partitions it owns every "
                                       "CXP_SNAPSHOT_INTERVAL seconds; per interval the last value of each worker, "
                                       "weighted by its answers, gives the fleet's NPS."))
        .with_panel(grid("NPS by source (ClickHouse)", sql(f"""
SELECT tenant, source, count() AS answers,
       round(100 * (countIf(score >= 9) - countIf(score <= 6)) / count(), 1) AS nps
FROM cx.survey_responses FINAL
WHERE kind = 'NPS' AND {TENANTS_SQL} AND $__timeFilter(event_time)
GROUP BY tenant, source
ORDER BY tenant, answers DESC""")))
        .with_panel(grid("Latest detractor comments (ClickHouse)", sql(f"""
SELECT event_time, tenant, source, touchpoint, score, comment
FROM cx.survey_responses FINAL
WHERE kind = 'NPS' AND score <= 6 AND comment != '' AND {TENANTS_SQL} AND $__timeFilter(event_time)
ORDER BY event_time DESC
LIMIT 100"""), width=24, description="No customer ids: the comment, where and when."))
        .with_row(dashboard.Row("Segments"))
        .with_panel(bars("NPS by segment", prom(
            f"tenant_window_dimension_segment:cx_segment_nps:score{{{TENANT_WINDOW}}}",
            "{{tenant}} {{dimension}}={{segment}}", instant=True)))
        .with_panel(bars("CSAT by segment", prom(
            f"tenant_window_dimension_segment:cx_segment_csat:ratio{{{TENANT_WINDOW}}}",
            "{{tenant}} {{dimension}}={{segment}}", instant=True), unit="percentunit"))
        .with_panel(bars("CES by segment", prom(
            f"tenant_window_dimension_segment:cx_segment_ces:mean{{{TENANT_WINDOW}}}",
            "{{tenant}} {{dimension}}={{segment}}", instant=True)))
        .with_row(dashboard.Row("Funnels"))
        .with_panel(bars("Funnel customers by step", prom(
            f"tenant_funnel_step_window:cx_funnel_customers:sum{{{TENANT_WINDOW}}}",
            "{{tenant}} {{funnel}} {{step}}", instant=True)))
        .with_panel(series("Funnel conversion (last step / first step)", prom(
            f"tenant_funnel_window:cx_funnel_conversion:ratio{{{TENANT_WINDOW}}}", "{{tenant}} {{funnel}} {{window}}"),
            unit="percentunit"))
        .with_panel(series("Funnel conversion time p50 / p90",
                           *quantiles("cx_funnel_conversion_seconds", "funnel, ", "1h", "{{tenant}} {{funnel}}"),
                           unit="s", description="Time from step 1 to the last step, conversions of the last hour."))
        .with_row(dashboard.Row("Churn risk and engagement"))
        .with_panel(series("Customers by churn-risk level",
                           prom(f"tenant_level:cx_churn_risk_customers:sum{{{TENANT}}}", "{{tenant}} {{level}}")))
        .with_panel(series("Churn signals / h by reason", prom(
            f"3600 * tenant_reason:cx_churn_signals:rate1h{{{TENANT}}}", "{{tenant}} {{reason}}")))
        .with_panel(series("Active customers", prom(f"tenant_window:cx_active_customers:sum{{{TENANT}}}",
                                                   "{{tenant}} {{window}}")))
        .with_panel(series("Stickiness (DAU / MAU)", prom(f"tenant:cx_stickiness:ratio{{{TENANT}}}", "{{tenant}}"),
                           unit="percentunit", description="Active customers 1d / 30d, summed over workers before "
                                                           "dividing."))
        .with_panel(series("Complaint rate (customers with a complaint / active)", prom(
            f"tenant_window:cx_complaint_customers:ratio{{{TENANT}}}", "{{tenant}} {{window}}"), unit="percentunit"))
        .with_panel(series("Detractor recovery (next NPS answer 7-10)", prom(
            f"tenant_window:cx_detractor_recovery:ratio{{{TENANT}}}", "{{tenant}} {{window}}"), unit="percentunit",
            description="Of the detractors followed up and heard from again, the share whose next answer was "
                        "passive or promoter."))
        .with_panel(series("Follow-up actions / h by kind", prom(
            f"3600 * sum by (tenant, kind) (rate(cx_actions_total{{{TENANT}}}[1h]))", "{{tenant}} {{kind}}")))
        .with_panel(series("Chatbot containment (resolved without a handoff)", prom(
            f"tenant_window:cx_chatbot_containment:ratio{{{TENANT_WINDOW}}}", "{{tenant}} {{window}}"),
            unit="percentunit", description="Conversations the bot resolved without handing them to a person / "
                                            "conversations that ended in the window."))
        .with_panel(bars("Chatbot conversations by outcome", prom(
            f"tenant_window_outcome:cx_chatbot_conversations:sum{{{TENANT_WINDOW}}}", "{{tenant}} {{outcome}}",
            instant=True), width=16))
        .with_row(dashboard.Row("Revenue"))
        .with_panel(series("Revenue by currency", prom(
            f"tenant_window_currency:cx_revenue:sum{{{TENANT_WINDOW}}}", "{{tenant}} {{currency}} {{window}}"),
            description="Orders' revenue in the window, in units of each currency (never converted or added across "
                        "currencies), summed exactly in minor units."))
        .with_panel(series("Average order value", prom(
            f"tenant_window_currency:cx_average_order_value:mean{{{TENANT_WINDOW}}}", "{{tenant}} {{currency}} {{window}}"),
            description="Revenue / orders, per currency; each order once per order_id, re-sent purchases included."))
        .with_panel(series("Revenue per active customer (ARPU)", prom(
            f"tenant_window_currency:cx_revenue_per_active_customer:mean{{{TENANT_WINDOW}}}",
            "{{tenant}} {{currency}} {{window}}"), description="Revenue / customers with any event in the window."))
        .with_panel(bars("Orders by currency", prom(
            f"tenant_window_currency:cx_orders:sum{{{TENANT_WINDOW}}}", "{{tenant}} {{currency}}", instant=True)))
        .with_panel(series("Repeat-purchase rate (30 days)", prom(
            f"tenant_window:cx_repeat_purchase:ratio{{{TENANT}}}", "{{tenant}}"), unit="percentunit",
            description="Of the customers with an order in the last 30 days, the share with two or more."))
        .with_panel(series("Cart abandonment", prom(
            f"tenant_window:cx_cart_abandonment:ratio{{{TENANT_WINDOW}}}", "{{tenant}} {{window}}"), unit="percentunit",
            description="Carts with no purchase within CXP_CART_ABANDON_AFTER (24 h) of their start / carts that "
                        "ended in the window."))
        .with_panel(bars("Carts by outcome, and open", prom(
            f"tenant_window_outcome:cx_carts:sum{{{TENANT_WINDOW}}}", "{{tenant}} {{outcome}}", instant=True),
            prom(f"tenant:cx_carts_open:sum{{{TENANT}}}", "{{tenant}} open", instant=True)))
        .with_panel(series("Time to first purchase p50 / p90 (estimated, last 24 h)", prom(
            f"tenant_quantile:cx_time_to_first_purchase_seconds:estimate24h{{{TENANT}}}", "{{tenant}} p{{quantile}}"),
            unit="s", description="From signup (else first event) to first purchase, from the histogram summed over "
                                  "workers; exact quantiles in the ClickHouse panel."))
        .with_panel(series("Revenue per day (ClickHouse orders)", sql(f"""
SELECT toDateTime(intDiv(toUInt32(order_time), 86400) * 86400) AS time, currency,
       sum(amount_minor) / pow(10, any(minor_unit)) AS revenue
FROM cx.orders FINAL
WHERE {TENANTS_SQL} AND $__timeFilter(order_time)
GROUP BY time, currency
ORDER BY time""", time_series=True), width=12,
            description="Every order once (FINAL), by order time, summed exactly in minor units."))
        .with_panel(grid("Time to first purchase, exact percentiles (ClickHouse)", sql(f"""
SELECT tenant, count() AS customers,
       quantileExact(0.5)(time_to_value_ms / 1000) AS p50_s,
       quantileExact(0.9)(time_to_value_ms / 1000) AS p90_s
FROM (
    SELECT tenant, assumeNotNull(time_to_value_ms) AS time_to_value_ms,
           toDateTime(intDiv(assumeNotNull(first_purchase_ms), 1000)) AS purchased_at
    FROM cx.customer_firsts FINAL
    WHERE first_purchase_ms IS NOT NULL AND {TENANTS_SQL}
)
WHERE $__timeFilter(purchased_at)
GROUP BY tenant
ORDER BY tenant"""), width=12,
            description="Customers whose first purchase is in the dashboard range, as measured when it was seen."))
        .with_row(dashboard.Row("Retention and subscriptions"))
        .with_panel(bars("Weekly retention by week after the first event", prom(
            f"tenant_age:cx_retention:ratio{{{TENANT}}}", "{{tenant}} week +{{age}}", instant=True),
            unit="percentunit", description="Of the customers of the 4 latest weekly cohorts whose week +N has "
                                            "ended, the share with an event in that week (cohort: the week of the "
                                            "first event, Monday to Monday UTC)."))
        .with_panel(grid("Cohort retention matrix (ClickHouse)", sql(f"""
SELECT tenant, toDate(cohort_week) AS cohort, count() AS customers,
       {RETENTION_WEEKS}
FROM cx.retention FINAL
WHERE {TENANTS_SQL} AND toUInt32(cohort_week) >= toUInt32(now()) - 13 * 604800
GROUP BY tenant, cohort_week
ORDER BY tenant, cohort"""), width=16,
            description="The last 13 weekly cohorts: customers by the week of their first event, and the share "
                        "active in each week after it (empty until that week is over)."))
        .with_panel(series("MRR by plan", prom(f"tenant_plan:cx_subscription_mrr:sum{{{TENANT}}}", "{{tenant}} {{plan}}"),
                           description="Monthly recurring revenue of the paying customers by their current plan, "
                                       "in the CRM's currency (summed exactly in hundredths)."))
        .with_panel(series("Paying customers by plan", prom(
            f"tenant_plan:cx_subscription_paying_customers:sum{{{TENANT}}}", "{{tenant}} {{plan}}")))
        .with_panel(bars("MRR moved in 30 days", prom(
            f'tenant_window_movement:cx_subscription_mrr_movement:sum{{{TENANT}, window="30d"}}',
            "{{tenant}} {{movement}}", instant=True),
            description="new: from no MRR; expansion: upgrades; contraction: downgrades; churned: the MRR the "
                        "customers who cancelled paid."))
        .with_panel(series("Upgrades and downgrades (30 days)", prom(
            f'tenant_window_movement:cx_subscription_changes:sum{{{TENANT}, window="30d", '
            f'movement=~"expansion|contraction"}}', "{{tenant}} {{movement}}"),
            description="Subscription events that raised (expansion) or lowered (contraction) a customer's MRR."))
        .with_panel(single("ARPU (MRR per paying customer)", prom(
            f"tenant:cx_subscription_arpu:mean{{{TENANT}}}", "{{tenant}}")))
        .with_panel(single("Churn rate (30 days)", prom(
            f'tenant_window:cx_subscription_churn:ratio{{{TENANT}, window="30d"}}', "{{tenant}}"), unit="percentunit",
            description="Churned / (paying now + churned): churn events over the paying spells of the 30 days."))
        .with_panel(single("LTV (ARPU / monthly churn)", prom(
            f"tenant:cx_subscription_ltv:estimate{{{TENANT}}}", "{{tenant}}"), width=8,
            description="MRR per paying customer times the expected lifetime in months; no value while nobody "
                        "churned in 30 days."))
        .with_row(dashboard.Row("Complaints"))
        .with_panel(series("Complaints open by priority", prom(
            f"tenant_priority:cx_complaints_open:sum{{{TENANT}}}", "{{tenant}} {{priority}}")))
        .with_panel(series("Complaints opened / h by category", prom(
            f"3600 * tenant_category:cx_complaints_opened:rate1h{{{TENANT}}}", "{{tenant}} {{category}}")))
        .with_panel(series("Complaints opened in the last hour against the expected",
                           prom(f"sum by (tenant) (cx_complaints_opened_recent{{{TENANT}}})", "{{tenant}} opened"),
                           prom(f"sum by (tenant) (cx_complaints_opened_expected{{{TENANT}}})",
                                "{{tenant}} expected"),
                           description="Opened in the spike detector's sliding event-time window (the last 60 "
                                       "minutes) against what that window usually gets at this time of the week; "
                                       "the spike flag says when the gap is significant."))
        .with_panel(single("Complaint spike", prom(f"tenant:cx_complaint_spike:max{{{TENANT}}}", "{{tenant}}")))
        .with_panel(series("SLA breaches / h", prom(
            f"3600 * tenant_priority_stage:cx_complaint_sla_breaches:rate1h{{{TENANT}}}",
            "{{tenant}} {{priority}} {{stage}}"), width=4))
        .with_panel(series("First response time p50 / p90",
                           *quantiles("cx_complaint_first_response_seconds", "priority, ", "1h",
                                      "{{tenant}} {{priority}}"), unit="s"))
        .with_panel(series("Resolution time p50 / p90",
                           *quantiles("cx_complaint_resolution_seconds", "priority, ", "6h", "{{tenant}} {{priority}}"),
                           unit="s"))
        .with_panel(grid("First response and resolution, exact percentiles (ClickHouse)", sql(f"""
SELECT tenant, priority, count() AS complaints,
       quantileExact(0.5)(first_response_s) AS first_response_p50_s,
       quantileExact(0.9)(first_response_s) AS first_response_p90_s,
       quantileExact(0.5)(resolution_s) AS resolution_p50_s,
       quantileExact(0.9)(resolution_s) AS resolution_p90_s
FROM (
    SELECT tenant, priority,
           toInt64(first_response_at) - toInt64(opened_at) AS first_response_s,
           toInt64(resolved_at) - toInt64(opened_at) AS resolution_s
    FROM cx.complaints FINAL
    WHERE {TENANTS_SQL} AND $__timeFilter(opened_at)
)
GROUP BY tenant, priority
ORDER BY tenant, priority"""), width=24,
            description="Complaints opened in the dashboard range, latest state (FINAL); NULL (not yet answered or "
                        "resolved) is left out of the percentiles."))
    )


def pipeline_health() -> dashboard.Dashboard:
    no_errors_yet = "0 * table:cxp_sink_rows:rate5m"  # a table without a failed attempt shows 0, not "No data"
    return (
        new_dashboard("cx-pipeline-health", "cx-pipeline — pipeline health",
                      "The workers: throughput, rejects, duplicates, event-time and Kafka lag, ClickHouse sink, offset commits "
                      "and unacknowledged records. Rates are fleet-wide recording rules over 5 minutes.",
                      ["operations"])
        .with_row(dashboard.Row("Input"))
        .with_panel(single("Workers up", prom("job:up:sum", "{{job}}")))
        .with_panel(series("Events consumed / s by source", prom("source:cxp_events_consumed:rate5m", "{{source}}"),
                           unit="ops", width=10))
        .with_panel(series("Rejected / s by source and reason", prom(
            "source_reason:cxp_events_rejected:rate5m", "{{source}} {{reason}}"), unit="ops", width=10))
        .with_panel(series("Duplicates / s by source", prom("source:cxp_events_duplicate:rate5m", "{{source}}"),
                           unit="ops"))
        .with_panel(series("Reject and duplicate ratio",
                           prom("source:cxp_events_rejected:ratio_rate5m", "{{source}} rejected"),
                           prom("source:cxp_events_duplicate:ratio_rate5m", "{{source}} duplicate"),
                           unit="percentunit"))
        .with_panel(series("Event-time lag by source", prom("source:cxp_event_time_lag_seconds:max", "{{source}}"),
                           unit="s", description="Wall clock minus the newest event time seen, worst worker."))
        .with_panel(series("Kafka consumer lag by source", prom("source:cxp_consumer_lag_records:sum", "{{source}}"),
                           width=24, description="Records in the input partitions not yet consumed and committed, "
                                                 "all workers (alert ConsumerLagGrowing)."))
        .with_row(dashboard.Row("ClickHouse sink and Kafka commits"))
        .with_panel(series("ClickHouse rows / s by table", prom("table:cxp_sink_rows:rate5m", "{{table}}"), unit="ops"))
        .with_panel(series("Sink errors",
                           prom(f"table:cxp_sink_errors:rate5m or {no_errors_yet}", "{{table}} failed attempts / s"),
                           prom(f"table:cxp_sink_errors:ratio_rate5m or {no_errors_yet}", "{{table}} failed share")))
        .with_panel(series("Flush time p50 / p99",
                           prom("histogram_quantile(0.5, table_le:cxp_sink_flush_seconds_bucket:rate5m)",
                                "p50 {{table}}"),
                           prom("histogram_quantile(0.99, table_le:cxp_sink_flush_seconds_bucket:rate5m)",
                                "p99 {{table}}"), unit="s"))
        .with_panel(series("Offset commit errors / s", prom(
            "sum by (instance) (rate(cxp_commit_errors_total[5m]))", "{{instance}}"), unit="ops", width=12))
        .with_panel(series("Oldest unacknowledged record age", prom(
            "max by (instance) (cxp_oldest_unacked_seconds)", "{{instance}}"), unit="s", width=12,
            description="Age of the oldest consumed record whose data is not yet durable; 0 when none. "
                        "Growing: the sink is stuck and consumption will pause."))
        .with_row(dashboard.Row("From ClickHouse (dashboard time range)"))
        .with_panel(series("Events stored / h by source (ClickHouse)", sql("""
SELECT toDateTime(intDiv(toUInt32(event_time), 3600) * 3600) AS time, source, count() AS events
FROM cx.events FINAL
WHERE $__timeFilter(event_time)
GROUP BY time, source
ORDER BY time""", time_series=True), width=12, description="By event time, each event once (FINAL)."))
        .with_panel(grid("Dead letters by reason (ClickHouse)", sql("""
SELECT reason, topic, count() AS records, max(received_at) AS last_seen
FROM cx.dead_letters FINAL
WHERE $__timeFilter(received_at)
GROUP BY reason, topic
ORDER BY records DESC
LIMIT 50""")))
    )


DASHBOARDS = {"cx-overview.json": cx_overview, "cx-pipeline-health.json": pipeline_health}


def as_json(board: dashboard.Dashboard) -> dict:
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


def prometheus_targets(model: dict) -> list[dict]:
    return [target for panel in model["panels"] for target in panel.get("targets", []) if "expr" in target]


def rule_check(model: dict):
    """A stat per recording rule the dashboard's panels read: "missing" when the series it is computed from
    exist but it has none (Prometheus does not evaluate it), else "ok". None when the panels read no rule."""
    rules = recording_rules()
    read = set().union(*(metric_names(target["expr"]) for target in prometheus_targets(model)))
    needed = [rule for rule in rules if rule in read]  # in the rule file's order
    if not needed:
        return None
    states = ValueMap({"0": ValueMappingResult(text="ok", color="green", index=0),
                       "1": ValueMappingResult(text="missing", color="red", index=1)})
    panel = (stat.Panel().title("Recording rules this dashboard reads").reduce_options(LAST_VALUE)
             .mappings([states]).color_mode(BigValueColorMode.BACKGROUND).text_mode(BigValueTextMode.VALUE_AND_NAME)
             .thresholds(dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(
                 [Threshold(value=None, color="green"), Threshold(value=1, color="red")])))
    targets = [prom(missing_rule_expr(rule, rules), rule, instant=True) for rule in needed]
    return with_targets(panel, targets, 24, 2 + 2 * -(-len(needed) // 4), description=(
        "The recording rules of deploy/prometheus/recording_rules.yml that the panels above read. \"missing\": "
        "the series the rule is computed from exist but the rule has none, so the Prometheus this dashboard reads does not "
        "evaluate it; add recording_rules.yml to its rule_files (deploy/prometheus/prometheus.yml) and reload. "
        "Panels built on a missing rule show No data."))


def datasource_variable(source: Source, default: VariableOption) -> dict:
    variable = (dashboard.DatasourceVariable(source.variable).label(f"{source.plugin_name} data source")
                .type(source.plugin_id).current(default))
    return as_json(variable)


def provisioned(source: Source) -> VariableOption:
    """The provisioned data source of the source's type (provisioning/datasources), the variable's default."""
    shipped = [ds for ds in yaml.safe_load(PROVISIONED_SOURCES.read_text(encoding="utf-8"))["datasources"]
               if ds["type"] == source.plugin_id]
    if len(shipped) != 1:
        raise ValueError(f"{PROVISIONED_SOURCES} must provision one {source.plugin_id} data source, not {len(shipped)}")
    return VariableOption(selected=True, text=shipped[0]["name"], value=shipped[0]["uid"])


def links(own_uid: str) -> list[dict]:
    """A link to every other dashboard, keeping the time range and the variables (the data sources among them)."""
    others = [as_json(build()) for build in DASHBOARDS.values()]
    return [as_json(dashboard.DashboardLink(other["title"]).type(DashboardLinkType.LINK).url(f"/d/{other['uid']}")
                    .icon("dashboard").tooltip(other["description"]).keep_time(True).include_vars(True))
            for other in others if other["uid"] != own_uid]


def sources_used(model: dict) -> list[Source]:
    refs = [target["datasource"] for panel in model["panels"] for target in panel.get("targets", [])]
    return [source for source in SOURCES if any(ref == source.ref.to_json() for ref in refs)]


def requires(model: dict, used: list[Source]) -> list[dict]:
    """Grafana's __requires: the Grafana version, the data source plugins and the panel plugins, sorted by id."""
    grafana_version = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]["grafana"]["image"].split(":")[1]
    found = {"grafana": {"type": "grafana", "id": "grafana", "name": "Grafana", "version": grafana_version}}
    for source in used:
        found[source.plugin_id] = {"type": "datasource", "id": source.plugin_id, "name": source.plugin_name,
                                   "version": source.plugin_version}
    for panel_type in {panel["type"] for panel in model["panels"]} - {"row"}:
        found[panel_type] = {"type": "panel", "id": panel_type, "name": PANEL_NAMES.get(panel_type, panel_type),
                             "version": grafana_version}  # core panels carry Grafana's version
    return [found[key] for key in sorted(found)]


def lay_out(panels: list[dict]) -> None:
    """Panels left to right on Grafana's 24-column grid, a panel that does not fit starting the next line, and
    each row on a line of its own (the SDK lets a panel run past column 24, which Grafana then moves)."""
    x = y = line_height = 0
    for panel in panels:
        width, height = panel["gridPos"]["w"], panel["gridPos"]["h"]
        if panel["type"] == "row" or x + width > 24:
            x, y, line_height = 0, y + line_height, 0
        panel["gridPos"].update(x=x, y=y)
        x, line_height = x + width, max(line_height, height)
        if panel["type"] == "row":
            x, y, line_height = 0, y + height, 0


def dashboard_model(build, importable: bool = False) -> dict:
    """The dashboard's JSON model: its rows, the recording-rule check, a datasource variable per data source
    type its panels read (default: the provisioned one, or for an import the __inputs entry), links to the
    other dashboards; panels (rows included) numbered 1, 2, ... in layout order."""
    board = build()
    check = rule_check(as_json(board))
    if check is not None:
        board = board.with_row(dashboard.Row("Recording rules")).with_panel(check)
    model = as_json(board)
    lay_out(model["panels"])
    for panel_id, panel in enumerate(model["panels"], start=1):
        panel["id"] = panel_id
    used = sources_used(model)
    defaults = {source.variable: VariableOption(selected=True, text=f"${{{source.input_name}}}",
                                                value=f"${{{source.input_name}}}") if importable
                else provisioned(source) for source in used}
    model.setdefault("templating", {})["list"] = [datasource_variable(source, defaults[source.variable])
                                                   for source in used] + model["templating"].get("list", [])
    model["links"] = links(model["uid"])
    if importable:
        model["__inputs"] = [{"name": source.input_name, "label": source.plugin_name, "description": "",
                              "type": "datasource", "pluginId": source.plugin_id, "pluginName": source.plugin_name}
                             for source in used]
        model["__requires"] = requires(model, used)
    return model


def render_json(build, importable: bool = False) -> str:
    return json.dumps(dashboard_model(build, importable), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generate(out: Path = OUT, import_out: Path = IMPORT_OUT) -> list[Path]:
    written = []
    for folder, importable in ((out, False), (import_out, True)):
        folder.mkdir(parents=True, exist_ok=True)
        for name, build in DASHBOARDS.items():
            (folder / name).write_text(render_json(build, importable), encoding="utf-8")
            written.append(folder / name)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.grafana.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder for the provisioned JSON (default: {OUT})")
    parser.add_argument("--import-out", type=Path, default=IMPORT_OUT,
                        help=f"folder for the JSON to import into another Grafana (default: {IMPORT_OUT})")
    args = parser.parse_args(argv)
    for path in generate(args.out, args.import_out):
        print(path)


if __name__ == "__main__":
    main()
