"""An older commit's mesh, run beside the current tree's so that both are measured in the same run.

This machine's speed varies up to 3x between days, so a speed-up is only meaningful as a ratio of two
figures taken minutes apart: `BENCH_BASELINE=1` (the default commit, or BENCH_BASELINE_COMMIT) or
`BENCH_BASELINE=<commit>` makes bench/chat_path.py measure that commit's gateway too.

The old commit is laid out as it was installed then, without installing it (the venv's editable install is
the current tree's): `git archive` into .data/bench-baseline/<commit>/src, its stubs generated as its own
Makefile did, and an import tree (tree/moteur: links to src/moteur/* plus each service folder under its
package name, read from its pyproject's package-dir; tree/bench: its bench package). Its processes run with
PYTHONPATH=tree, which precedes site-packages on sys.path; the editable install's finder (appended to
sys.meta_path by a .pth, so consulted only when the path finder fails) would still supply a current
moteur.<service>.<module> the old commit lacks, so tree/sitecustomize.py removes it.

The old side runs in its own interpreter (bench/baseline_agent.py): its LocalStack, its key helper, its
stubs and its load generator, driven over a pipe, so two versions of moteur never meet in one process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_COMMIT = "1109934"
CACHE = REPO / ".data" / "bench-baseline"
AGENT = Path(__file__).with_name("baseline_agent.py")
_READY_MARK = ".prepared-v2"  # bumped when the layout changes, so older caches are remade


def requested_commit() -> str | None:
    """The commit BENCH_BASELINE asks for: None when unset or off, the default commit for "1"/"yes"/"true"
    (BENCH_BASELINE_COMMIT overrides it), else the value itself (a commit id or any rev git understands)."""
    value = os.environ.get("BENCH_BASELINE", "").strip()
    if value.lower() in ("", "0", "no", "false", "off"):
        return None
    if value.lower() in ("1", "yes", "true", "on"):
        return os.environ.get("BENCH_BASELINE_COMMIT", DEFAULT_COMMIT)
    return value


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout.strip()


def resolve(commit: str) -> str:
    """The full id: the cache is keyed by it, so a short id and a branch name share one copy."""
    return _git("rev-parse", "--verify", f"{commit}^{{commit}}")


def _extract(sha: str, src: Path) -> None:
    """The commit's files, by git archive: unlike a worktree it leaves no entry in the repository's metadata."""
    src.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(REPO), "archive", "--format=tar", sha], stdout=subprocess.PIPE)
    assert archive.stdout is not None
    with tarfile.open(fileobj=archive.stdout, mode="r|") as tar:
        tar.extractall(src, filter="data")
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {sha} failed")


def _generate_stubs(src: Path) -> None:
    """What the commit's `make stubs` did: grpc_tools.protoc (this venv's) over protos/moteur/v1 into moteur/v1."""
    protos = sorted(str(p.relative_to(src)) for p in (src / "protos" / "moteur" / "v1").glob("*.proto"))
    (src / "moteur" / "v1").mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-Iprotos", "--python_out=.", "--pyi_out=.",
                    "--grpc_python_out=.", *protos], cwd=src, check=True)
    (src / "moteur" / "v1" / "__init__.py").write_text('"""Generated from protos/moteur/v1 by bench/baseline.py."""\n')


def _service_packages(src: Path) -> dict[str, Path]:
    """moteur.<name> → its folder, from the commit's own pyproject (services/<name> then, but read, not assumed)."""
    setuptools: dict[str, Any] = tomllib.loads((src / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = setuptools.get("package-dir", {})
    return {name.removeprefix("moteur."): src / folder for name, folder in mapping.items()
            if name.startswith("moteur.") and name.count(".") == 1}


def _import_tree(src: Path, tree: Path) -> None:
    """The installed layout as links (as `make lint` builds build/typecheck): moteur/* and each service as
    moteur/<name>; bench beside it, so the agent's `import bench.keys` is the commit's own."""
    package = tree / "moteur"
    package.mkdir(parents=True)
    for entry in (src / "moteur").iterdir():
        (package / entry.name).symlink_to(entry)
    for name, folder in _service_packages(src).items():
        if not (package / name).exists():
            (package / name).symlink_to(folder)
    (tree / "bench").symlink_to(src / "bench")
    (tree / "sitecustomize.py").write_text(_SITECUSTOMIZE)


# Imported by site after the .pth files, from PYTHONPATH: without this, a moteur.<service>.<module> the old
# commit lacks would still be found by the editable install's finder in the current tree.
_SITECUSTOMIZE = '''"""Written by bench/baseline.py: the current tree's editable install is kept out of this process."""
import sys

sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path[:] = [p for p in sys.path if not p.startswith("__editable__")]
'''


def prepare(commit: str) -> Path:
    """The import tree of ``commit``, made once and cached (a half-made copy, without its mark, is remade)."""
    sha = resolve(commit)
    home = CACHE / sha[:12]
    tree = home / "tree"
    if (home / _READY_MARK).exists():
        return tree
    shutil.rmtree(home, ignore_errors=True)
    _extract(sha, home / "src")
    _generate_stubs(home / "src")
    _import_tree(home / "src", tree)
    (home / _READY_MARK).write_text(sha + "\n")
    return tree


def environment(tree: Path) -> dict[str, str]:
    """This process's environment with only the old tree on PYTHONPATH, which precedes site-packages (the tree's
    sitecustomize.py also removes the current tree's editable finder). PYTHONSAFEPATH: the stack's `python -m
    moteur.<service>` children must not put their working directory first either."""
    return {**os.environ, "PYTHONPATH": str(tree), "PYTHONSAFEPATH": "1"}


@dataclass(frozen=True)
class SliceResult:
    """One measured slice of the old gateway: each call's latency in seconds and the slice's wall time."""

    latencies: list[float]
    seconds: float


class BaselineMesh:
    """The old commit's whole mesh (instant model only) and its load generator, in one child process.

    Lines on the child's stdin are commands ("run <concurrency> <seconds>"); each is answered by one JSON
    line. Closing stdin stops its stack. Its stderr (the old stack's chatter) goes to a log in the cache."""

    def __init__(self, commit: str) -> None:
        self.commit = commit
        self.sha = resolve(commit)
        self._process: subprocess.Popen[str] | None = None
        self.gateway = ""
        self._log_path = CACHE / self.sha[:12] / "agent.log"

    def start(self) -> None:
        tree = prepare(self.commit)
        log = self._log_path.open("w")
        try:
            self._process = subprocess.Popen(
                # -P (PYTHONSAFEPATH too): the agent's folder, the current bench/ (modules named files, tools,
                # memory...), is not put first on sys.path.
                [sys.executable, "-P", str(AGENT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                text=True, env=environment(tree), cwd=tree,
            )
        finally:
            log.close()
        ready = self._reply()
        self.gateway = str(ready["gateway"])

    def run(self, concurrency: int, seconds: float) -> SliceResult:
        """Chat at ``concurrency`` for ``seconds`` against the old gateway, from inside the child."""
        self._send(f"run {concurrency} {seconds}")
        reply = self._reply()
        return SliceResult([float(x) for x in reply["latencies"]], float(reply["seconds"]))

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()  # the agent stops its stack on end of input
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _send(self, line: str) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(line + "\n")
        self._process.stdin.flush()

    def _reply(self) -> dict[str, Any]:
        assert self._process is not None and self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            self._process.wait()
            tail = "".join(self._log_path.read_text().splitlines(keepends=True)[-30:])
            raise RuntimeError(f"the baseline agent ({self.commit}) exited ({self._process.returncode}); "
                               f"{self._log_path}:\n{tail}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"the baseline agent ({self.commit}) failed: {reply['error']}")
        return reply

    def __enter__(self) -> BaselineMesh:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

