"""Every Prometheus series cx-pipeline exports (SPEC §6): the one place for metric names."""
from prometheus_client import Counter, Histogram

SINK_ROWS = Counter("cxp_sink_rows", "Rows written durably to a sink table.", ["table"])
SINK_ERRORS = Counter("cxp_sink_errors", "Failed sink flush attempts (each retry counts).", ["table"])
SINK_FLUSH_SECONDS = Histogram(
    "cxp_sink_flush_seconds", "Time to flush one batch to a sink table, retries included.", ["table"]
)
