"""deploy/production/ checked as far as this machine can: no Docker engine runs here, so the compose
file is read as data and every config it mounts is checked against it, with the real tools where they
exist (promtool for Prometheus, amtool for Alertmanager, haproxy for Grafana's ClickHouse balancer;
Debian's `prometheus`, `prometheus-alertmanager` and `haproxy` packages, which `./run` installs).
Without them these tests fail, not skip.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from pipeline.settings import Settings
from sinks.clickhouse.backend import majority
from tests.unit.test_deploy_rules import DEPLOY, promtool, rules

PROFILE = DEPLOY / "production"
COMPOSE = yaml.safe_load((PROFILE / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
WORKER_ENV = SERVICES["worker"]["environment"]
VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::?[-?][^}]*)?\}")


def services_named(prefix: str) -> list[str]:
    return sorted(name for name in SERVICES if re.fullmatch(rf"{prefix}-\d+", name))


def env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (PROFILE / "env.example").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {key: value for key, value in pairs}


def substituted(value: object) -> str:
    """What compose makes of ${VAR:-default}: the default, else a stand-in."""
    return VARIABLE.sub(lambda m: (m.group(0).split(":-", 1)[1][:-1] if ":-" in m.group(0) else "x"), str(value))


def xml(path: Path) -> ET.Element:
    return ET.parse(path).getroot()


def tool(name: str, package: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if not path:
        pytest.fail(f"{name} is not installed, so the profile cannot be checked: apt-get install {package}",
                    pytrace=False)
    return path


def worker_settings() -> Settings:
    return Settings(**{key[4:].lower(): substituted(value) for key, value in WORKER_ENV.items()
                       if not key.endswith("_FILE")})


def amtool(*args: str) -> str:
    result = subprocess.run([tool("amtool", "prometheus-alertmanager"), *args], cwd=PROFILE, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, f"$ amtool {' '.join(args)}\n{result.stdout}{result.stderr}"
    return result.stdout


# ------------------------------------------------------------------------------------- the compose file

def test_profile_has_every_part_the_issue_names():
    assert len(services_named("kafka")) == 3
    assert len(services_named("keeper")) == 3
    assert len(services_named("ch")) == 3
    assert {"topics", "worker", "prometheus", "alertmanager", "grafana", "ch-lb"} <= set(SERVICES)
    assert "zookeeper" not in " ".join(SERVICES)


def test_every_mounted_file_exists():
    mounts = [volume.split(":")[0] for service in SERVICES.values() for volume in service.get("volumes", [])]
    files = [source for source in mounts if source.startswith(".")]
    assert len(files) >= 8
    for source in files:
        assert (PROFILE / source).exists(), f"docker-compose.yml mounts {source}, which does not exist"
    for service in SERVICES.values():
        if "build" in service:
            context = PROFILE / service["build"]["context"]
            assert (context / service["build"]["dockerfile"]).exists() and (context / "pyproject.toml").exists()


def test_every_secret_and_variable_is_defined_and_documented():
    defined = COMPOSE["secrets"]
    for name, service in SERVICES.items():
        for secret in service.get("secrets", []):
            assert secret in defined, f"{name} uses undefined secret {secret}"
    used = set(VARIABLE.findall((PROFILE / "docker-compose.yml").read_text()))
    used |= {secret["environment"] for secret in defined.values()}
    assert used <= set(env_example()), f"not in env.example: {sorted(used - set(env_example()))}"
    assert all(not value for key, value in env_example().items() if "PASSWORD" in key or "TOKEN" in key), \
        "env.example must not carry a secret"
    assert "deploy/production/.env" in (DEPLOY.parent / ".gitignore").read_text().split()


def test_kraft_quorum_names_the_three_brokers():
    brokers = services_named("kafka")
    ids = {name: SERVICES[name]["environment"]["KAFKA_NODE_ID"] for name in brokers}
    assert len(set(ids.values())) == 3
    for name in brokers:
        env = SERVICES[name]["environment"]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        voters = dict(reversed(voter.split("@")) for voter in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
        assert voters == {f"{broker}:9093": str(ids[broker]) for broker in brokers}
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"INTERNAL://{name}:9092"
        assert env["CLUSTER_ID"] == SERVICES[brokers[0]]["environment"]["CLUSTER_ID"]
        # a write acknowledged by min.insync.replicas survives one broker loss, and one broker may be down
        assert 1 < env["KAFKA_MIN_INSYNC_REPLICAS"] < env["KAFKA_DEFAULT_REPLICATION_FACTOR"] <= len(brokers)
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == len(brokers)
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_workers_reach_every_broker_and_replicate_their_topics():
    settings = worker_settings()
    assert sorted(settings.kafka.bootstrap_servers.split(",")) == [f"{b}:9092" for b in services_named("kafka")]
    env = SERVICES["kafka-1"]["environment"]
    assert settings.kafka.topic_replication_factor == env["KAFKA_DEFAULT_REPLICATION_FACTOR"]
    assert settings.kafka.topic_replication_factor > env["KAFKA_MIN_INSYNC_REPLICAS"]
    assert urlsplit(settings.clickhouse.url).hostname in services_named("ch")
    assert settings.clickhouse.cluster
    # every CXP_* variable is a setting (Settings forbids unknown fields), the _FILE ones included
    assert set(Settings().flat()) >= set(WORKER_ENV)
    for key, value in WORKER_ENV.items():
        if key.endswith("_FILE"):
            secret = Path(value).name
            assert value == f"/run/secrets/{secret}" and secret in SERVICES["worker"]["secrets"]


# ------------------------------------------------------------------------------- ClickHouse and Keeper

def test_workers_reach_every_clickhouse_replica_and_one_may_be_down():
    """deploy/README.md promises that one ClickHouse replica down stops nothing: the workers know every
    replica, and the insert quorum (a majority) is below the replica count."""
    clickhouse = worker_settings().clickhouse
    named = urlsplit(clickhouse.url)
    servers = sorted([f"{named.hostname}:{named.port}", *clickhouse.alt_hosts])
    assert servers == [f"{ch}:9000" for ch in services_named("ch")]
    assert majority(len(services_named("ch"))) < len(services_named("ch"))
    assert set(services_named("ch")) <= set(SERVICES["worker"]["depends_on"])  # the first start's DDL needs all


def test_clickhouse_cluster_config_matches_the_services():
    config = xml(PROFILE / "clickhouse" / "cluster.xml")
    cluster = config.find(f"remote_servers/{WORKER_ENV['CXP_CLICKHOUSE_CLUSTER']}")
    assert cluster is not None, "cluster.xml does not define the cluster the workers name"
    shards = cluster.findall("shard")
    assert len(shards) == 1 and shards[0].findtext("internal_replication") == "true"
    replicas = shards[0].findall("replica")
    assert sorted(r.findtext("host") for r in replicas) == services_named("ch")
    for replica in replicas:  # the Distributed tables log in as the user the image creates
        assert replica.find("user").get("from_env") == "CLICKHOUSE_USER"
        assert replica.find("password").get("from_env") == "CLICKHOUSE_PASSWORD"
    assert config.find("macros/replica").get("from_env") == "CLICKHOUSE_REPLICA"
    names = {name: SERVICES[name]["environment"]["CLICKHOUSE_REPLICA"] for name in services_named("ch")}
    assert names == {name: name for name in services_named("ch")}, "each replica must name itself uniquely"
    nodes = [(n.findtext("host"), n.findtext("port")) for n in config.findall("zookeeper/node")]
    assert sorted(host for host, _ in nodes) == services_named("keeper")
    assert {port for _, port in nodes} == {xml(PROFILE / "keeper" / "keeper_config.xml").findtext("keeper_server/tcp_port")}
    assert config.findtext("distributed_ddl/path")
    for name in services_named("ch"):
        assert "./clickhouse/cluster.xml:/etc/clickhouse-server/config.d/cluster.xml:ro" in SERVICES[name]["volumes"]
        assert set(SERVICES[name]["depends_on"]) == set(services_named("keeper"))


def test_keeper_raft_configuration_matches_the_services():
    server = xml(PROFILE / "keeper" / "keeper_config.xml").find("keeper_server")
    assert server.find("server_id").get("from_env") == "KEEPER_SERVER_ID"
    raft = {s.findtext("hostname"): s.findtext("id") for s in server.findall("raft_configuration/server")}
    assert sorted(raft) == services_named("keeper")
    for name in services_named("keeper"):
        assert str(SERVICES[name]["environment"]["KEEPER_SERVER_ID"]) == raft[name]
        assert any(v.endswith(":/etc/clickhouse-keeper/keeper_config.xml:ro") for v in SERVICES[name]["volumes"])


# ---------------------------------------------------------------- Prometheus, Alertmanager, Grafana

def test_prometheus_config_is_valid_with_the_mounted_rules(tmp_path):
    """Lay the files out as the container sees them (config + rules/), then let promtool check all."""
    mounts = dict(volume.split(":")[:2] for volume in SERVICES["prometheus"]["volumes"] if volume.startswith("."))
    root = Path("/etc/prometheus")
    for source, target in mounts.items():
        copy = tmp_path / Path(target).relative_to(root)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROFILE / source, copy)
    token = tmp_path / "metrics_token"
    token.write_text("stand-in\n")
    config = (tmp_path / "prometheus.yml").read_text().replace("/run/secrets/metrics_token", str(token))
    (tmp_path / "prometheus.yml").write_text(config)
    output = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert "SUCCESS" in output and output.count("rules found") == 2, output


def test_prometheus_finds_the_workers_and_the_alertmanager():
    config = yaml.safe_load((PROFILE / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "cx-pipeline")  # the rules select it
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["worker"] and str(discovery["port"]) == str(WORKER_ENV["CXP_WEB_PORT"])
    assert job["authorization"]["credentials_file"] == "/run/secrets/metrics_token"
    assert "metrics_token" in SERVICES["prometheus"]["secrets"]
    targets = [t for am in config["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]]
    assert targets == ["alertmanager:9093"] and "alertmanager" in SERVICES


def test_alertmanager_config_is_valid():
    assert "SUCCESS" in amtool("check-config", "alertmanager.yml")


def test_alertmanager_secret_files_are_mounted():
    config = (PROFILE / "alertmanager.yml").read_text()
    files = set(re.findall(r"_file: (/run/secrets/\w+)", config))
    assert files, "alertmanager.yml reads no secret file"
    assert {Path(f).name for f in files} == set(SERVICES["alertmanager"]["secrets"])


@pytest.mark.parametrize("alert", rules("alert"), ids=lambda rule: f"{rule['alert']}-{rule['labels'].get('condition', '')}")
def test_every_alert_reaches_its_team_and_critical_ones_page(alert):
    labels = alert["labels"]
    output = amtool("config", "routes", "test", "--config.file=alertmanager.yml",
                    f"alertname={alert['alert']}", *(f"{k}={v}" for k, v in labels.items()))
    receivers = set(output.strip().split(","))
    expected = {"platform": "pipeline-ops", "cx": "cx-alerts"}[labels["team"]]
    assert expected in receivers, output
    assert ("pager" in receivers) == (labels["severity"] == "critical"), output


def test_grafana_uses_the_profiles_data_sources():
    sources = yaml.safe_load((PROFILE / "grafana" / "datasources.yml").read_text())["datasources"]
    assert {s["uid"] for s in sources} == {"prometheus", "clickhouse"}  # the dashboards' uids
    clickhouse = next(s for s in sources if s["uid"] == "clickhouse")
    assert clickhouse["jsonData"]["host"] == "ch-lb" and str(clickhouse["jsonData"]["port"]) == "9000"
    assert clickhouse["secureJsonData"]["password"] == "$__file{/run/secrets/clickhouse_password}"
    assert "clickhouse_password" in SERVICES["grafana"]["secrets"]
    prometheus = next(s for s in sources if s["uid"] == "prometheus")
    assert urlsplit(prometheus["url"]).hostname == "prometheus"
    volumes = SERVICES["grafana"]["volumes"]
    assert "../grafana/dashboards:/etc/grafana/dashboards:ro" in volumes


def test_grafanas_clickhouse_balancer_passes_to_every_replica():
    """haproxy -c accepts the config (the replicas' names do not resolve here, which it only warns about);
    it listens on the native port, lists every replica and checks each on its HTTP port."""
    config = PROFILE / "clickhouse" / "haproxy.cfg"
    result = subprocess.run([tool("haproxy", "haproxy"), "-c", "-f", str(config)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "Configuration file is valid" in result.stdout, result.stdout + result.stderr
    warnings = [line for line in result.stderr.splitlines() if "[WARNING]" in line]
    assert all("could not resolve address" in line for line in warnings), warnings
    text = config.read_text()
    assert re.search(r"^  bind :9000$", text, re.M)
    assert re.findall(r"^  server (\S+) (\S+)$", text, re.M) == [(ch, f"{ch}:9000") for ch in services_named("ch")]
    assert "check port 8123" in text  # ClickHouse's HTTP port in the image, where /replicas_status answers
    service = SERVICES["ch-lb"]
    assert "./clickhouse/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in service["volumes"]
    assert set(service["depends_on"]) == set(services_named("ch"))
    assert "ch-lb" in SERVICES["grafana"]["depends_on"]
