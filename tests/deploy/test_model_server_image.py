"""The model server's image, checked without a container engine: the Dockerfile read stage by stage. llama.cpp
compiled for any CPU of its architecture (GGML_NATIVE=OFF), its OpenMP runtime (libgomp1) installed in the final
stage and never purged, a build step that imports llama_cpp there; every system library the locally compiled
llama.cpp links (ldd) is one the base image has or the final stage installs. Also: every stage on the one
pinned base image, and the services' dependencies in a layer of their own, before the code."""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DOCKERFILE = ROOT / "Dockerfile"
FINAL = "model-server"

# Shared libraries python:3.11-slim-bookworm has (libc6, libgcc-s1, libstdc++6 — apt needs it —, zlib1g, the
# kernel's vDSO): nothing to install for them.
BASE_IMAGE_LIBRARIES = {
    "linux-vdso.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1", "libc.so.6", "libm.so.6", "libdl.so.2",
    "libpthread.so.0", "librt.so.1", "libgcc_s.so.1", "libstdc++.so.6", "libz.so.1",
}
# Any other library llama.cpp may link, and the Debian package the final stage must install for it.
DEBIAN_PACKAGES = {"libgomp.so.1": "libgomp1", "libopenblas.so.0": "libopenblas0", "libcurl.so.4": "libcurl4"}


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arguments for kw, arguments in self.instructions if kw == keyword]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments), continuation lines joined and comments dropped, as Docker reads them."""
    instructions, current = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue  # a comment, also inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1]
            continue
        current += line
        if current.strip():
            keyword, _, arguments = current.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
        current = ""
    return instructions


def _parse(text: str) -> tuple[dict[str, str], dict[str, Stage]]:
    """The global ARGs (before the first FROM) and the stages by name."""
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for keyword, arguments in _instructions(text):
        if keyword == "FROM":
            words = arguments.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else f"#{len(stages)}"
            stage = stages[name] = Stage(name, words[0])
        elif stage is None:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            key, _, value = arguments.partition("=")
            global_args[key] = value
        else:
            stage.instructions.append((keyword, arguments))
    return global_args, stages


GLOBAL_ARGS, STAGES = _parse(DOCKERFILE.read_text())
INSTRUCTIONS = "\n".join(f"{kw} {args}" for kw, args in _instructions(DOCKERFILE.read_text()))  # no comments


def _commands(run: str) -> list[list[str]]:
    """The shell commands of a RUN line, split on && ; || (enough for these Dockerfiles' plain RUN lines)."""
    commands, current = [], []
    for token in shlex.split(run, posix=True):
        if token in ("&&", ";", "||"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [c for c in [*commands, current] if c]


def _manual_packages(stage: Stage) -> set[str]:
    """The Debian packages a stage leaves marked as installed by hand: `apt-get install`ed or `apt-mark manual`,
    and not purged or removed after. (`autoremove` removes only packages installed as dependencies: it cannot
    remove these, and it would remove any other.)"""
    manual: set[str] = set()
    for run in stage.all("RUN"):
        for command in _commands(run):
            words = [w for w in command if not w.startswith("-")]
            if words[:1] == ["apt-get"] and len(words) > 1:
                if words[1] == "install":
                    manual |= set(words[2:])
                elif words[1] in ("purge", "remove"):
                    manual -= set(words[2:])
            elif words[:3] == ["apt-mark", "manual"]:
                manual |= set(words[3:])
            elif words[:3] == ["apt-mark", "auto"]:
                manual -= set(words[3:])
    return manual


def _llama_stages() -> list[Stage]:
    """The final stage and the stages it copies from."""
    final = STAGES[FINAL]
    sources = {m.group(1) for c in final.all("COPY") if (m := re.match(r"--from=(\S+)", c))}
    return [final, *(STAGES[s] for s in sources if s in STAGES)]


def _llama_installs() -> list[tuple[Stage, str]]:
    return [(stage, run) for stage in _llama_stages() for run in stage.all("RUN")
            if re.search(r"pip install .*llama-cpp-python", run)]


def test_every_stage_starts_from_the_one_pinned_base_image() -> None:
    image = GLOBAL_ARGS["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", image), image
    for stage in STAGES.values():
        assert stage.base in ("${PYTHON_IMAGE}", *STAGES), f"{stage.name} starts from {stage.base}"
    assert re.findall(r"python:3\.11[\w.-]*", INSTRUCTIONS) == [image.partition("@")[0]]  # named once: the ARG


def test_llama_cpp_is_compiled_for_any_cpu_not_the_build_machines() -> None:
    installs = _llama_installs()
    assert len(installs) == 1, installs
    stage, run = installs[0]
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF' in run or any(
        "CMAKE_ARGS" in e and "-DGGML_NATIVE=OFF" in e for e in stage.all("ENV") + stage.all("ARG"))
    assert "GGML_NATIVE=ON" not in INSTRUCTIONS and "-march=native" not in INSTRUCTIONS
    assert 'llama-cpp-python[server]==' in run  # pinned, with the server's dependencies


def test_libgomp_is_installed_in_the_final_stage_and_survives_every_purge() -> None:
    final = STAGES[FINAL]
    assert "libgomp1" in _manual_packages(final)
    # The compilers stay in the build stage: nothing in the final stage to purge.
    assert not {"build-essential", "cmake", "gcc", "g++"} & _manual_packages(final)


def test_the_final_stage_fails_the_build_unless_llama_cpp_imports() -> None:
    final = STAGES[FINAL]
    order = [(kw, args) for kw, args in final.instructions if kw in ("RUN", "COPY")]
    checks = [i for i, (kw, args) in enumerate(order)
              if kw == "RUN" and re.search(r"python -c .*import llama_cpp\b", args)]
    assert checks, "no `python -c 'import llama_cpp'` RUN in the final stage"
    gomp = min(i for i, (kw, args) in enumerate(order) if kw == "RUN" and "libgomp1" in args)
    llama = min(i for i, (kw, args) in enumerate(order)
                if "llama" in args and (kw == "COPY" or "llama-cpp-python" in args))
    assert max(checks) > max(gomp, llama), "the import check must run once llama_cpp and libgomp1 are in"


def test_the_server_takes_threads_and_interrupt_requests_from_the_environment() -> None:
    """The chart sets N_THREADS, N_THREADS_BATCH and INTERRUPT_REQUESTS: a flag in CMD would win over them."""
    final = STAGES[FINAL]
    (cmd,) = final.all("CMD")
    assert "llama_cpp.server" in cmd
    assert not re.search(r"--(n_threads|n_threads_batch|interrupt_requests)\b", cmd)
    env = " ".join(final.all("ENV"))
    assert "INTERRUPT_REQUESTS=false" in env and "N_THREADS=" in env


def _linked_system_libraries(lib_dir: Path) -> dict[str, set[str]]:
    """For each shared library the llama_cpp build links from outside its own lib directory: which files."""
    bundled = {p.name for p in lib_dir.iterdir()}
    linked: dict[str, set[str]] = {}
    for library in sorted(lib_dir.glob("*.so*")):
        if library.is_symlink() or not library.is_file():
            continue
        output = subprocess.run(["ldd", str(library)], capture_output=True, text=True, timeout=30, check=True).stdout
        for line in output.splitlines():
            soname, _, target = line.strip().partition(" => ")
            soname = Path(soname.split(" (")[0]).name
            if not soname or soname in bundled or Path(target.split(" (")[0]).parent == lib_dir:
                continue
            linked.setdefault(soname, set()).add(library.name)
    return linked


def test_every_library_llama_cpp_links_is_in_the_final_image() -> None:
    """ldd on the llama_cpp build of this venv (the same llama-cpp-python version, compiled the same way with
    CMake): each system library it needs is one of the base image's or a package the final stage installs."""
    if shutil.which("ldd") is None:
        pytest.skip("no ldd on this machine")
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        pytest.skip("llama-cpp-python is not installed here (the `local` extra)")
    lib_dir = Path(spec.origin).parent / "lib"
    if not any(lib_dir.glob("*.so*")):
        pytest.skip(f"no shared libraries in {lib_dir}")
    linked = _linked_system_libraries(lib_dir)
    installed = _manual_packages(STAGES[FINAL])
    missing = {soname: DEBIAN_PACKAGES.get(soname, "an unknown package: add it to DEBIAN_PACKAGES")
               for soname in linked if soname not in BASE_IMAGE_LIBRARIES
               and DEBIAN_PACKAGES.get(soname) not in installed}
    assert missing == {}, f"linked by llama_cpp, not in the final image: {missing}"
    if "libgomp.so.1" in linked:  # OpenMP (GGML_OPENMP, on by default): libggml links it
        assert "libgomp1" in installed


def test_the_services_dependencies_are_locked_layers_before_their_code() -> None:
    """A code change rebuilds the wheel, not the dependencies: those come from the hash-pinned locks, first the
    core every image shares (before SERVICE), then the service's own."""
    service = STAGES["service"]
    order = [(kw, args) for kw, args in service.instructions if kw in ("RUN", "COPY", "ARG")]
    core = next(i for i, (kw, args) in enumerate(order) if kw == "RUN" and "-r /tmp/core.lock" in args)
    own = next(i for i, (kw, args) in enumerate(order) if kw == "RUN" and "-r /tmp/service.lock" in args)
    wheels = next(i for i, (kw, args) in enumerate(order) if kw == "COPY" and args.startswith("--from=build"))
    argument = next(i for i, (kw, args) in enumerate(order) if kw == "ARG" and args.startswith("SERVICE"))
    assert order[core - 1] == ("COPY", "requirements/core.lock /tmp/core.lock")
    assert order[own - 1] == ("COPY", "requirements/${SERVICE}.lock /tmp/service.lock")
    assert core < argument < own < wheels  # the core layer is shared by the five images; all before the code
    assert all("--require-hashes" in order[i][1] for i in (core, own))
    assert "--no-deps" in order[wheels + 1][1]  # the locks hold every dependency: pip adds the project alone
