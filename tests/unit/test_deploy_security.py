"""deploy/: the compose stack takes its collector token and metrics token from the environment, and
Prometheus sends the metrics token the workers require."""
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_compose_takes_the_tokens_from_the_environment_and_prometheus_sends_the_metrics_token():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    workers = [service for name, service in services.items() if name.startswith("worker-")]
    token_file = "/run/secrets/metrics_token"
    for worker in workers:
        assert worker["environment"]["CXP_COLLECTOR_TOKENS"].startswith("${CXP_COLLECTOR_TOKENS:?")
        assert worker["environment"]["CXP_METRICS_TOKEN_FILE"] == token_file
        assert "metrics_token" in worker["secrets"]
    assert compose["secrets"]["metrics_token"] == {"environment": "CXP_METRICS_TOKEN"}
    assert "metrics_token" in services["prometheus"]["secrets"]
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "cx-pipeline")
    assert job["authorization"] == {"type": "Bearer", "credentials_file": token_file}
