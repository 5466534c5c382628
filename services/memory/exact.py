"""An exact, in-process search index mirroring the embedded Milvus Lite file.

Milvus Lite 3 is a pure-Python engine: a filtered search costs ~12 ms at 10k vectors and ~70 ms at 100k
whatever the index type (measured by ``bench/memory.py``), while numpy does the same exact search in under
a millisecond. On one machine the store therefore keeps the Lite file as the durable copy and answers
searches from this mirror — loaded from the file at start, changed in step with every write, one matrix per
tenant so a search never touches another tenant's rows. A Milvus cluster is searched by Milvus itself.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from moteur.memory.records import Hit, Kind, MemoryRecord, SearchFilter

_COLUMNS = ("user", "session", "kind", "model")  # kept as arrays so that filters are vectorised


@dataclass(slots=True)
class _Tenant:
    dimensions: int
    vectors: np.ndarray = field(init=False)
    created: np.ndarray = field(init=False)
    live: np.ndarray = field(init=False)
    columns: dict[str, np.ndarray] = field(init=False)
    records: list[MemoryRecord | None] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.vectors = np.zeros((0, self.dimensions), dtype=np.float32)
        self.created = np.zeros(0, dtype=np.int64)
        self.live = np.zeros(0, dtype=bool)
        self.columns = {name: np.zeros(0, dtype=object) for name in _COLUMNS}

    def put(self, records: Sequence[MemoryRecord], vectors: np.ndarray) -> None:
        for index, record in enumerate(records):
            row = self.rows.get(record.id)
            if row is None:
                row = self.rows[record.id] = len(self.records)
                self.records.append(None)
                self._grow(len(self.records))
            self.records[row] = record
            self.vectors[row] = vectors[index]
            self.created[row] = record.created_at_ms
            self.live[row] = True
            for name in _COLUMNS:
                self.columns[name][row] = getattr(record, name)

    def drop(self, ids: Iterable[str]) -> None:
        for memory_id in ids:
            row = self.rows.pop(memory_id, None)
            if row is not None:
                self.live[row], self.records[row] = False, None
        if len(self.rows) < len(self.records) // 2:
            self._compact()

    def mask(self, where: SearchFilter) -> np.ndarray:
        size = len(self.records)
        mask = self.live[:size].copy()
        if where.created_after_ms:
            mask &= self.created[:size] >= where.created_after_ms
        if where.created_before_ms:
            mask &= self.created[:size] < where.created_before_ms
        for name, wanted in (("user", where.user), ("session", where.session), ("model", where.model)):
            if wanted:
                mask &= self.columns[name][:size] == wanted
        if where.other_models:
            mask &= self.columns["model"][:size] != where.other_models
        if where.kinds:
            mask &= np.isin(self.columns["kind"][:size], list(where.kinds))
        if where.ids:
            chosen = np.zeros(size, dtype=bool)
            chosen[[self.rows[i] for i in where.ids if i in self.rows]] = True
            mask &= chosen
        return mask

    def _grow(self, size: int) -> None:
        capacity = len(self.live)
        if size <= capacity:
            return
        capacity = max(size, capacity * 2, 64)
        vectors = np.zeros((capacity, self.dimensions), dtype=np.float32)
        vectors[: len(self.vectors)] = self.vectors
        self.vectors = vectors
        self.created = np.concatenate([self.created, np.zeros(capacity - len(self.created), dtype=np.int64)])
        self.live = np.concatenate([self.live, np.zeros(capacity - len(self.live), dtype=bool)])
        for name, column in self.columns.items():
            self.columns[name] = np.concatenate([column, np.zeros(capacity - len(column), dtype=object)])

    def _compact(self) -> None:
        keep = [row for row in range(len(self.records)) if self.records[row] is not None]
        self.vectors, self.created = self.vectors[keep].copy(), self.created[keep].copy()
        self.live = np.ones(len(keep), dtype=bool)
        self.columns = {name: column[keep].copy() for name, column in self.columns.items()}
        self.records = [self.records[row] for row in keep]
        self.rows = {r.id: i for i, r in enumerate(self.records) if r is not None}


class ExactIndex:
    def __init__(self, dimensions: int) -> None:
        self.dimensions = dimensions
        self._tenants: dict[str, _Tenant] = {}

    def __len__(self) -> int:
        return sum(len(t.rows) for t in self._tenants.values())

    def put(self, records: Sequence[MemoryRecord], vectors: np.ndarray) -> None:
        by_tenant: dict[str, list[int]] = {}
        for index, record in enumerate(records):
            by_tenant.setdefault(record.tenant, []).append(index)
        for tenant, indexes in by_tenant.items():
            space = self._tenants.setdefault(tenant, _Tenant(self.dimensions))
            space.put([records[i] for i in indexes], vectors[indexes])

    def drop(self, tenant: str, ids: Iterable[str]) -> None:
        if tenant in self._tenants:
            self._tenants[tenant].drop(ids)

    def matching(self, where: SearchFilter, limit: int) -> list[MemoryRecord]:
        """The records ``where`` selects (no vector involved), at most ``limit``."""
        space = self._tenants.get(where.tenant)
        if space is None:
            return []
        return [space.records[row] for row in np.nonzero(space.mask(where))[0][:limit]]

    def models(self, tenant: str) -> Counter[str]:
        """How many of the tenant's vectors each embedding model made."""
        space = self._tenants.get(tenant)
        return Counter() if space is None else self.models_of(space)

    @staticmethod
    def models_of(space: _Tenant) -> Counter[str]:
        size = len(space.records)
        names, counts = np.unique(space.columns["model"][:size][space.live[:size]].astype(str), return_counts=True)
        return Counter(dict(zip(names.tolist(), counts.tolist(), strict=True)))

    def count_made_by_others(self, model: str) -> int:
        return sum(count for space in self._tenants.values() for name, count in self.models_of(space).items()
                   if name != model)

    def made_by_others(self, model: str, kinds: Sequence[Kind], limit: int) -> list[MemoryRecord]:
        """Up to ``limit`` records of any tenant, of ``kinds``, whose vectors another model made."""
        found: list[MemoryRecord] = []
        for tenant in self._tenants:
            where = SearchFilter(tenant=tenant, other_models=model, kinds=kinds)
            found += self.matching(where, limit - len(found))
            if len(found) >= limit:
                break
        return found

    def search(self, vector: np.ndarray, where: SearchFilter, top_k: int, min_score: float) -> list[Hit]:
        space = self._tenants.get(where.tenant)
        if space is None or not space.rows:
            return []
        rows = np.nonzero(space.mask(where))[0]
        if not len(rows):
            return []
        scores = space.vectors[rows] @ vector  # vectors are normalised: the dot product is the cosine
        best = np.argpartition(-scores, top_k)[:top_k] if len(rows) > top_k else np.arange(len(rows))
        best = best[np.argsort(-scores[best])]
        return [Hit(space.records[rows[i]], float(scores[i])) for i in best
                if scores[i] >= min_score]
