"""Metric cores: one pure module per metric, behind the interface of :mod:`pipeline.metrics.base`;
:mod:`pipeline.metrics.registry` lists them and derives their run order."""
