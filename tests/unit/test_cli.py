import subprocess
import sys

import pytest

from pipeline.cli import build_parser

COMMANDS = [a.dest for a in build_parser()._subparsers._group_actions[0]._choices_actions]


def test_commands_are_listed():
    assert {"worker", "demo", "simulate", "produce", "topics", "config"} <= set(COMMANDS)


@pytest.mark.parametrize("command", [[]] + [[c] for c in COMMANDS])
def test_every_command_has_help(command):
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", *command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "usage: cxp" in result.stdout


def test_worker_without_kafka_explains_the_fix(monkeypatch):
    monkeypatch.delenv("CXP_KAFKA_URL", raising=False)
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "worker"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "CXP_KAFKA_URL" in result.stderr


def test_config_lists_every_setting():
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "config"], capture_output=True, text=True, timeout=60,
                            env={"COLUMNS": "250", "PATH": ""})
    assert result.returncode == 0 and "CXP_DEDUP_HORIZON" in result.stdout
