"""A real Prometheus server scraping given targets (runtime.local.prometheus), for tests."""
from runtime.local.prometheus import PrometheusServer

__all__ = ["PrometheusServer"]
