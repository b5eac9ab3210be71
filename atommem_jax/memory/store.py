"""AtomMem long-term memory: a vector store edited with Create/Read/Update/Delete.

One store per episode. Entries get stable integer ids (monotonic, never reused);
vectors are L2-normalised on the way in, so scores are cosine similarities. Two
backends answer reads: "scann" (default; brute force while small, a tree index once
large, see `_scann_backend`) and "exact" (numpy). Both re-rank their candidates
exactly, so results are ordered best first with ties broken by the lower id.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from atommem_jax.memory import _exact_backend
from atommem_jax.memory import _scann_backend
from atommem_jax.memory import _vectors

BACKENDS = ("scann", "exact")


@dataclasses.dataclass(frozen=True)
class MemoryEntry:
  id: int
  text: str


@dataclasses.dataclass(frozen=True)
class Retrieved:
  """One read result; `score` is the inner product of unit vectors (cosine)."""

  id: int
  text: str
  score: float


class StoreFullError(Exception):
  """A create would take the store past `max_entries`."""


class MemoryStore:
  """Texts with unit embeddings [D], searchable by inner product.

  Args:
    dim: embedding width D.
    backend: "scann" or "exact".
    max_entries: cap on the number of live entries; None for no cap.
    tree_threshold, num_leaves, leaves_to_search, reorder, rebuild_fraction:
      ScaNN tree settings (see `_scann_backend.TreeOptions`); unused by "exact".
  """

  def __init__(
      self,
      dim: int,
      *,
      backend: str = "scann",
      max_entries: int | None = None,
      tree_threshold: int = 2048,
      num_leaves: int | None = None,
      leaves_to_search: int | None = None,
      reorder: int | None = None,
      rebuild_fraction: float = 0.5,
  ):
    if dim < 1:
      raise ValueError(f"dim={dim} must be >= 1.")
    if max_entries is not None and max_entries < 0:
      raise ValueError(f"max_entries={max_entries} must be >= 0 or None.")
    self._index: _exact_backend.ExactIndex | _scann_backend.ScannIndex
    if backend == "scann":
      self._index = _scann_backend.ScannIndex(
          dim,
          _scann_backend.TreeOptions(
              threshold=tree_threshold,
              num_leaves=num_leaves,
              leaves_to_search=leaves_to_search,
              reorder=reorder,
              rebuild_fraction=rebuild_fraction,
          ))
    elif backend == "exact":
      self._index = _exact_backend.ExactIndex(dim)
    else:
      raise ValueError(f"backend={backend!r} is not one of {BACKENDS}.")
    self.dim = dim
    self.backend = backend
    self.max_entries = max_entries
    self._texts: dict[int, str] = {}
    self._next_id = 0

  def __len__(self) -> int:
    return len(self._texts)

  @property
  def full(self) -> bool:
    """True when a cap is set and reached."""
    return self.max_entries is not None and len(self) >= self.max_entries

  @property
  def search_mode(self) -> str:
    """How reads are answered now: "exact", "brute_force" or "tree"."""
    return self._index.search_mode

  def create(self, texts: Sequence[str], embeddings: np.ndarray) -> list[int]:
    """Adds entries; returns their new ids, in the order of `texts`.

    Args:
      texts: entry texts [n].
      embeddings: their embeddings [n, D]; normalised here.

    Raises:
      StoreFullError: the store would exceed `max_entries`; nothing is added.
    """
    if isinstance(texts, str):
      raise TypeError("texts must be a sequence of strings, got one str; "
                      "wrap a single text in a list.")
    vectors = _vectors.unit_rows(embeddings, self.dim, "create embeddings")
    if len(vectors) != len(texts):
      raise ValueError(f"create got {len(texts)} texts but {len(vectors)} "
                       "embedding rows; pass one row per text.")
    if self.max_entries is not None and len(self) + len(texts) > self.max_entries:
      raise StoreFullError(
          f"memory store holds {len(self)} of max_entries={self.max_entries}; "
          f"cannot create {len(texts)} more.")
    if len(texts) == 0:
      return []
    entry_ids = np.arange(self._next_id, self._next_id + len(texts))
    self._next_id += len(texts)
    self._index.add(entry_ids, vectors)
    new_ids = entry_ids.tolist()
    self._texts.update(zip(new_ids, texts))
    return new_ids

  def read(self, query_embeddings: np.ndarray,
           k: int = 6) -> list[list[Retrieved]]:
    """Top-k entries per query [Q, D], best first, ties to the lower id.

    Each query gets min(k, len(self)) results, so an empty store gives an empty
    list per query.
    """
    if k < 1:
      raise ValueError(f"k={k} must be >= 1.")
    queries = _vectors.unit_rows(query_embeddings, self.dim, "query embeddings")
    if not self._texts:
      return [[] for _ in queries]
    return [[
        Retrieved(entry_id, self._texts[entry_id], score)
        for entry_id, score in zip(ids.tolist(), scores.tolist())
    ] for ids, scores in self._index.search(queries, min(k, len(self)))]

  def update(self, entry_id: int, text: str, embedding: np.ndarray) -> None:
    """Replaces an entry's text and embedding [D] (or [1, D]); the id stays."""
    self._require(entry_id)
    embedding = np.asarray(embedding)
    if embedding.shape not in ((self.dim,), (1, self.dim)):
      raise ValueError(f"update embedding must have shape [{self.dim}], got "
                       f"{list(embedding.shape)}.")
    vector = _vectors.unit_rows(
        embedding.reshape(1, self.dim), self.dim, "update embedding")[0]
    self._index.replace(entry_id, vector)
    self._texts[entry_id] = text

  def delete(self, entry_id: int) -> None:
    """Removes an entry; its id is never handed out again."""
    self._require(entry_id)
    self._index.remove(entry_id)
    del self._texts[entry_id]

  def get(self, entry_id: int) -> MemoryEntry:
    self._require(entry_id)
    return MemoryEntry(entry_id, self._texts[entry_id])

  def entries(self) -> list[MemoryEntry]:
    """All live entries in id order."""
    return [MemoryEntry(i, text) for i, text in self._texts.items()]

  def _require(self, entry_id: int) -> None:
    if entry_id not in self._texts:
      raise KeyError(f"no memory entry with id {entry_id}: it was never "
                     "created or has been deleted.")
