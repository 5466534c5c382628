"""The layers stay apart: the shared package (moteur/: runtime, client, cli, devstack) imports no service, its
modules import each other without cycles, each service's settings live in its own folder, and the names of the
protos' roles are mapped in one place (moteur/runtime/protonames.py). Read from the source with ast: nothing is
imported."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT / "moteur"
SERVICES = ("gateway", "router", "memory", "files", "tools")
GENERATED = SHARED / "v1"


def _module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def _sources(root: Path, package: str) -> dict[str, Path]:
    return {_module_name(p, root, package): p for p in sorted(root.rglob("*.py"))
            if GENERATED not in p.parents and ".venv" not in p.parts}


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _imports(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """Every module ``path`` imports, anywhere in it (a function's lazy import too), with its line."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *filter(None, [base])])
            yield node.lineno, base
            for alias in node.names:  # `from moteur import gateway` imports the module moteur.gateway
                yield node.lineno, f"{base}.{alias.name}"


def _is_service(name: str) -> bool:
    return any(name == f"moteur.{s}" or name.startswith(f"moteur.{s}.") for s in SERVICES)


def test_the_shared_package_imports_no_service() -> None:
    leaks: dict[str, str] = {}  # one line each: the first service module it names
    for module, path in _sources(SHARED, "moteur").items():
        for line, name in _imports(module, path):
            if _is_service(name):
                leaks.setdefault(f"{path.relative_to(ROOT)}:{line}", name)
    leaks_text = [f"{where} imports {name}" for where, name in leaks.items()]
    assert not leaks, "the shared package must not import a service (move the shared part to moteur/runtime):\n" \
        + "\n".join(leaks_text)


def test_the_shared_package_has_no_import_cycle() -> None:
    sources = _sources(SHARED, "moteur")
    graph = {module: {name for _, name in _imports(module, path) if name in sources and name != module}
             for module, path in sources.items()}
    # A package's __init__ is imported by its modules: an edge to it is no cycle of the modules themselves.
    packages = {m for m, p in sources.items() if p.name == "__init__.py"}
    for module in graph:
        graph[module] -= packages

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            module, trail = stack.pop()
            for target in graph[module]:
                if target == start:
                    return [*trail, start]
                if target not in seen:
                    seen.add(target)
                    stack.append((target, [*trail, target]))
        return None

    cycles = [" -> ".join(c) for m in sorted(graph) if (c := cycle_from(m))]
    assert not cycles, "modules of the shared package import each other:\n" + "\n".join(cycles)


def _settings_classes(path: Path) -> set[str]:
    return {node.name for node in _tree(path).body if isinstance(node, ast.ClassDef) and node.name.endswith("Settings")}


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_settings_live_in_its_folder(service: str) -> None:
    assert _settings_classes(ROOT / "services" / service / "settings.py"), f"services/{service}/settings.py"


def test_runtime_settings_hold_only_what_several_modules_share() -> None:
    """A settings class of moteur/runtime/settings.py is read by the shared package or by two services at least;
    one that only one service reads belongs in services/<name>/settings.py."""
    shared = _settings_classes(SHARED / "runtime" / "settings.py") - {"MoteurSettings"}
    readers: dict[str, set[str]] = {name: set() for name in shared}
    places = [(_sources(SHARED, "moteur"), "shared")] + [
        (_sources(ROOT / "services" / s, f"moteur.{s}"), s) for s in SERVICES]
    for sources, reader in places:
        for module, path in sources.items():
            if module == "moteur.runtime.settings":
                continue
            for node in ast.walk(_tree(path)):
                if isinstance(node, ast.ImportFrom) and node.module == "moteur.runtime.settings":
                    for alias in node.names:
                        if alias.name in readers:
                            readers[alias.name].add(reader)
    lonely = {name: sorted(who) for name, who in readers.items() if "shared" not in who and len(who) < 2}
    assert not lonely, f"read by one service only, move them to its settings.py: {lonely}"


def _names_a_role(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr.startswith("ROLE_") and isinstance(n.value, ast.Name)
               and n.value.id == "common_pb2" for n in ast.walk(node))


def test_role_names_are_mapped_once() -> None:
    """Only moteur/runtime/protonames.py maps the Role enum's values to names (a dict of them); everything else
    uses its ROLES and ROLE_NAMES."""
    sources = {**_sources(SHARED, "moteur"),
               **{k: v for s in SERVICES for k, v in _sources(ROOT / "services" / s, f"moteur.{s}").items()}}
    uses = [f"{path.relative_to(ROOT)}:{node.lineno}"
            for module, path in sources.items() if module != "moteur.runtime.protonames"
            for node in ast.walk(_tree(path))
            if isinstance(node, ast.Dict | ast.DictComp) and _names_a_role(node)]
    assert not uses, "a map of roles: use moteur.runtime.protonames' ROLES or ROLE_NAMES:\n" + "\n".join(uses)
