"""A real Prometheus server scraping given targets (pipeline.local.prometheus), for tests."""
from pipeline.local.prometheus import PrometheusServer

__all__ = ["PrometheusServer"]
