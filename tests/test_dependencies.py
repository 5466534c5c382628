"""Each image carries what its service imports, pinned: the third-party modules a service's code imports come
from the core lock (what moteur/runtime needs) or its own lock (its extra in pyproject.toml), and every
dependency pyproject.toml declares is pinned in the locks (`make lock` was run after the last change)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("gateway", "router", "memory", "files", "tools")
# Imported only on a path the service's image never takes: the router reads a local GGUF's tokenizer with
# llama_cpp only on one machine (`gguf:` tokenizers; a cluster's registry names `hf:` ones).
ONE_MACHINE_ONLY = {"router": {"llama_cpp"}}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def _locked(lock: str) -> frozenset[str]:
    text = (ROOT / "requirements" / f"{lock}.lock").read_text()
    return frozenset(_normal(m) for m in re.findall(r"^([A-Za-z0-9][A-Za-z0-9_.\-]*)==", text, re.MULTILINE))


def _typing_only(tree: ast.AST) -> set[int]:
    """The nodes under ``if TYPE_CHECKING:``: imports for the type checker (e.g. boto3's stubs), never run."""
    return {id(inner) for node in ast.walk(tree)
            if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
            for statement in node.body for inner in ast.walk(statement)}


def _imports(folder: Path) -> set[str]:
    found: set[str] = set()
    for path in folder.rglob("*.py"):  # a service's packages too (services/gateway/api)
        tree = ast.parse(path.read_text())
        typing_only = _typing_only(tree)
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in ("moteur", "__future__")}


def _unlocked(folder: Path, allowed: frozenset[str]) -> dict[str, list[str]]:
    distributions = packages_distributions()
    return {module: distributions.get(module, ["?"]) for module in sorted(_imports(folder))
            if not {_normal(d) for d in distributions.get(module, [])} & allowed}


def test_the_runtime_imports_only_what_the_core_lock_pins() -> None:
    assert _unlocked(ROOT / "moteur" / "runtime", _locked("core")) == {}


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_only_what_its_image_installs(service: str) -> None:
    unlocked = _unlocked(ROOT / "services" / service, _locked("core") | _locked(service))
    assert set(unlocked) <= ONE_MACHINE_ONLY.get(service, set()), unlocked


def test_every_declared_dependency_is_pinned() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {"core": project["dependencies"], **project["optional-dependencies"]}
    for group, requirements in declared.items():
        lock = group if group in ("core", *SERVICES) else "all"
        names = {_normal(Requirement(r).name) for r in requirements} - {"moteur"}
        assert names <= _locked(lock), f"{group}: not in requirements/{lock}.lock: {names - _locked(lock)}"
