"""Every `docker compose` command the operator docs show names services that exist: the service arguments
of logs, exec, restart, stop, up, ... and of --scale, looked up in the compose file the command names
with -f (deploy/docker-compose.yml, deploy/production/docker-compose.yml), or in either when it names
none. A placeholder such as `worker-N` is not a service and fails."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "deploy" / "RUNBOOK.md", ROOT / "deploy" / "README.md", ROOT / "README.md"]
COMPOSE_FILES = {path: set(yaml.safe_load((ROOT / path).read_text())["services"])
                 for path in ("deploy/docker-compose.yml", "deploy/production/docker-compose.yml")}

CODE = re.compile(r"```[^\n]*\n(.*?)```|`([^`\n]+)`", re.S)  # fenced blocks and inline code
COMMAND = re.compile(r"docker compose [^\n]*")
GLOBAL_VALUE_OPTIONS = {"-f", "--file", "--profile", "-p", "--project-name", "--env-file", "--project-directory"}
VALUE_OPTIONS = {"--tail", "--since", "--until", "--index", "--protocol", "--scale", "-t", "--timeout", "-u", "--user",
                 "-w", "--workdir", "-e", "--env"}
TAKES_SERVICES = {"logs", "exec", "restart", "stop", "start", "up", "ps", "kill", "rm", "pause", "unpause", "port",
                  "top", "pull", "build", "create", "run", "events", "images"}
ONE_SERVICE = {"exec", "port", "run"}  # the rest of the line is the command or the port


def compose_commands(text: str) -> list[tuple[str, str, list[str]]]:
    """(command as written, compose file it names or "", services it names) for each `docker compose` command
    in the code of a markdown text."""
    code = "\n".join(block or inline for block, inline in CODE.findall(text))
    found = []
    for match in COMMAND.finditer(code):
        command = re.split(r"\s+#|\s*(?:\||&&|;|>)", match.group(0))[0].strip()
        words = shlex.split(command)[2:]
        compose_file, subcommand, services = "", None, []
        position = 0
        while position < len(words):
            word = words[position]
            if subcommand is None and word in GLOBAL_VALUE_OPTIONS:
                if word in ("-f", "--file"):
                    compose_file = words[position + 1]
                position += 2
                continue
            if word.startswith("-"):
                if subcommand is not None and word in VALUE_OPTIONS:
                    if word == "--scale" and position + 1 < len(words):
                        services.append(words[position + 1].split("=", 1)[0])
                    position += 2
                else:
                    position += 1
                continue
            if subcommand is None:
                subcommand = word
            elif subcommand in TAKES_SERVICES:
                services.append(word)
                if subcommand in ONE_SERVICE:
                    break
            position += 1
        found.append((command, compose_file, services))
    return found


def commands_in_docs() -> list[tuple[str, str, str, list[str]]]:
    return [(doc.relative_to(ROOT).as_posix(), *command) for doc in DOCS for command in compose_commands(doc.read_text())]


def test_the_command_parser():
    text = ("Run `docker compose logs worker-N`, not docker compose up in prose, and\n```bash\n"
            "docker compose -f deploy/production/docker-compose.yml up -d --build --scale worker=3   # comment\n```\n"
            "`docker compose port --index 2 worker 6066`, `docker compose -f x.yml logs -f --tail 5 a b | grep c`\n"
            "```\ndocker compose -f deploy/docker-compose.yml --profile demo exec worker-1 cxp config\n"
            "docker compose -f deploy/docker-compose.yml down -v\n```")
    assert [(f, s) for _, f, s in compose_commands(text)] == [
        ("", ["worker-N"]), ("deploy/production/docker-compose.yml", ["worker"]), ("", ["worker"]),
        ("x.yml", ["a", "b"]), ("deploy/docker-compose.yml", ["worker-1"]), ("deploy/docker-compose.yml", [])]
    assert "worker-N" not in set().union(*COMPOSE_FILES.values())


def test_the_docs_show_compose_commands():
    commands = commands_in_docs()
    assert {doc for doc, *_ in commands} == {path.relative_to(ROOT).as_posix() for path in DOCS}
    assert sum(1 for *_, services in commands if services) >= 4


@pytest.mark.parametrize("doc, command, compose_file, services", commands_in_docs(), ids=lambda value: str(value))
def test_every_compose_command_names_existing_services(doc, command, compose_file, services):
    if compose_file:
        assert compose_file in COMPOSE_FILES, f"{doc}: `{command}` runs against {compose_file}, which is not a compose file"
        known = COMPOSE_FILES[compose_file]
    else:
        known = set().union(*COMPOSE_FILES.values())
    missing = [service for service in services if service not in known]
    assert not missing, (f"{doc}: `{command}` names {missing}, not services of "
                         f"{compose_file or ' or '.join(COMPOSE_FILES)} ({', '.join(sorted(known))})")
