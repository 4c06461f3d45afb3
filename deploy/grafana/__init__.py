"""Grafana dashboards as code (generate.py), their queries made concrete (queries.py), and a picture of
each dashboard drawn from those queries (render.py)."""
