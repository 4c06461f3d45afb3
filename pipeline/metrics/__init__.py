"""Metric cores: one pure module per metric, behind the interface of :mod:`pipeline.metrics.base`."""
