"""Unit-vector table shared by both store backends, and the exact re-ranking they share.

Both backends keep every stored vector here: the exact backend searches this table
directly, the ScaNN backend needs it to (re)train its tree, since a ScaNN searcher
cannot hand its dataset back. Final scores always come from `VectorTable.rerank`, so
the two backends agree score for score on the candidates they find.
"""

from __future__ import annotations

import numpy as np

# Extra candidates fetched beyond k before exact re-ranking: float32 search scores
# carry ~1e-7 error and exact duplicates tie, so the true k-th entry may sit a few
# places lower in the candidate list than k.
TIE_SLACK = 8


def unit_rows(vectors: np.ndarray, dim: int, what: str) -> np.ndarray:
  """Returns `vectors` [n, D] as float32 rows of L2 norm 1.

  Raises:
    ValueError: `vectors` is not [n, dim], or a row is zero or not finite.
  """
  vectors = np.asarray(vectors, dtype=np.float32)
  if vectors.ndim != 2 or vectors.shape[1] != dim:
    raise ValueError(
        f"{what} must have shape [n, {dim}], got {list(vectors.shape)}; "
        "embed texts with an embedder whose dim matches the store's dim.")
  norms = np.linalg.norm(vectors, axis=1, keepdims=True)
  bad_rows = np.flatnonzero(~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0))
  if bad_rows.size:
    raise ValueError(
        f"{what} row {int(bad_rows[0])} has zero norm or non-finite values; "
        "cannot L2-normalise it.")
  return vectors / norms


class VectorTable:
  """Unit vectors [n, D] keyed by entry id, stored as dense rows.

  Appends grow a preallocated matrix geometrically; a removal moves the last
  row into the hole, so every operation but growth is O(D).
  """

  def __init__(self, dim: int):
    self.dim = dim
    self._matrix = np.empty((0, dim), np.float32)
    self._ids = np.empty((0,), np.int64)
    self._row_of: dict[int, int] = {}

  def __len__(self) -> int:
    return len(self._row_of)

  @property
  def vectors(self) -> np.ndarray:
    """Stored vectors [n, D] (a view; row i belongs to `ids[i]`)."""
    return self._matrix[:len(self)]

  @property
  def ids(self) -> np.ndarray:
    """Entry ids [n] of the rows of `vectors` (a view)."""
    return self._ids[:len(self)]

  def append(self, ids: np.ndarray, vectors: np.ndarray) -> None:
    """Adds new entries `ids` [n] with unit `vectors` [n, D]."""
    start, stop = len(self), len(self) + len(ids)
    if stop > len(self._ids):
      capacity = max(stop, 2 * len(self._ids), 16)
      matrix = np.empty((capacity, self.dim), np.float32)
      matrix[:start] = self.vectors
      entry_ids = np.empty((capacity,), np.int64)
      entry_ids[:start] = self.ids
      self._matrix, self._ids = matrix, entry_ids
    self._matrix[start:stop] = vectors
    self._ids[start:stop] = ids
    self._row_of.update(zip(ids.tolist(), range(start, stop)))

  def assign(self, entry_id: int, vector: np.ndarray) -> None:
    """Replaces the vector [D] of an existing entry."""
    self._matrix[self._row_of[entry_id]] = vector

  def remove(self, entry_id: int) -> None:
    """Drops an entry; the last row takes its place."""
    row = self._row_of.pop(entry_id)
    last = len(self)
    if row != last:
      self._matrix[row] = self._matrix[last]
      self._ids[row] = self._ids[last]
      self._row_of[int(self._ids[row])] = row

  def rows_of(self, entry_ids: list[int]) -> np.ndarray:
    """Row indices [c] of `entry_ids`."""
    return np.fromiter((self._row_of[i] for i in entry_ids), np.int64,
                       len(entry_ids))

  def rerank(
      self, queries: np.ndarray, candidate_rows: list[np.ndarray], k: int
  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Exact top-k of each query's candidates, best first, ties to the lower id.

    Scores are float64 inner products rounded once to float32: independent of
    BLAS summation order and of row position, so equal vectors tie exactly and
    every backend reports the same score for the same entry.

    Args:
      queries: unit query vectors [Q, D].
      candidate_rows: per query, row indices [c] to rank (c may differ per query).
      k: results wanted per query.

    Returns:
      Per query, (entry ids [min(k, c)], float32 scores [min(k, c)]).
    """
    results = []
    for query, rows in zip(queries.astype(np.float64), candidate_rows):
      candidates = self._matrix[rows].astype(np.float64)
      scores = (candidates @ query).astype(np.float32)
      entry_ids = self._ids[rows]
      best = np.lexsort((entry_ids, -scores))[:k]
      results.append((entry_ids[best], scores[best]))
    return results
