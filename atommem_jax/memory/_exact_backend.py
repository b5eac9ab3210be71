"""Exact inner-product search over a numpy matrix: the reference backend."""

from __future__ import annotations

import numpy as np

from atommem_jax.memory import _vectors


class ExactIndex:
  """Scores every stored vector against every query (one float32 matmul)."""

  def __init__(self, dim: int):
    self._table = _vectors.VectorTable(dim)

  @property
  def search_mode(self) -> str:
    return "exact"

  def add(self, entry_ids: np.ndarray, vectors: np.ndarray) -> None:
    self._table.append(entry_ids, vectors)

  def replace(self, entry_id: int, vector: np.ndarray) -> None:
    self._table.assign(entry_id, vector)

  def remove(self, entry_id: int) -> None:
    self._table.remove(entry_id)

  def search(self, queries: np.ndarray,
             k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Top-k (ids, scores) per query [Q, D]; see `VectorTable.rerank`."""
    size = len(self._table)
    num_candidates = min(size, k + _vectors.TIE_SLACK)
    scores = queries @ self._table.vectors.T  # [Q, n]
    if num_candidates == size:
      candidate_rows = [np.arange(size)] * len(queries)
    else:
      top = np.argpartition(-scores, num_candidates - 1, axis=1)
      candidate_rows = list(top[:, :num_candidates])
    return self._table.rerank(queries, candidate_rows, k)
