"""ScaNN backend: brute force while small, tree + asymmetric hashing + reorder once large.

Regimes and the rebuild rule (n = entries now, n_t = entries when the tree was trained,
c = vectors created, updated or deleted since the current searcher was built):
- brute force (`score_brute_force`) while n < threshold; it also works on an empty
  store, which a tree + AH index cannot (it must compute data means to train).
- tree once n >= threshold: partitions and AH codebooks are trained on the store.
- tree retrained when c >= rebuild_fraction * n_t: new and moved vectors are only
  assigned to the old partitions, so after that much churn the partitions no longer
  fit the data. Retraining costs O(n), which this rule amortises to O(1 / fraction)
  per operation.
- back to brute force when n < threshold // 2 (or at a retrain with n < threshold);
  the gap keeps a store that hovers around the threshold from rebuilding on every
  operation.
ScaNN only proposes candidates; `VectorTable.rerank` scores them exactly, so in the
brute-force regime results equal the exact backend's.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import scann

from atommem_jax.memory import _vectors

# Dimensions per asymmetric-hashing block and the anisotropic quantisation threshold
# ScaNN recommends for dot-product search.
_AH_DIMS_PER_BLOCK = 2
_AH_ANISOTROPIC_THRESHOLD = 0.2
# Mean points per leaf is at least this, so k-means leaves stay populated.
_MIN_POINTS_PER_LEAF = 64
# Small trees have few leaves; a third of them would miss too many neighbours.
_MIN_LEAVES_TO_SEARCH = 4


@dataclasses.dataclass(frozen=True)
class TreeOptions:
  """When to switch to a tree index and how to build it; None picks from n.

  Attributes:
    threshold: entry count at which the tree replaces brute force.
    num_leaves: k-means partitions; default about sqrt(n).
    leaves_to_search: partitions scanned per query; default num_leaves / 3
      (rounded up, at least 4): AH scoring is cheap, and on clustered data at
      1e6 entries searching a fifth of the leaves gave recall@6 0.82, a third 0.91.
    reorder: AH candidates re-scored in float32 by ScaNN; default 256.
    rebuild_fraction: retrain after this fraction of the trained size changed.
  """

  threshold: int = 2048
  num_leaves: int | None = None
  leaves_to_search: int | None = None
  reorder: int | None = None
  rebuild_fraction: float = 0.5

  def __post_init__(self):
    if self.threshold < 2 * _MIN_POINTS_PER_LEAF:
      raise ValueError(
          f"tree_threshold={self.threshold} is too small to train a tree; use "
          f">= {2 * _MIN_POINTS_PER_LEAF}.")
    for name in ("num_leaves", "leaves_to_search", "reorder"):
      value = getattr(self, name)
      if value is not None and value < 1:
        raise ValueError(f"{name}={value} must be >= 1 or None.")
    if not self.rebuild_fraction > 0:
      raise ValueError(
          f"rebuild_fraction={self.rebuild_fraction} must be > 0.")

  def leaves_for(self, size: int) -> tuple[int, int]:
    """(num_leaves, leaves_to_search) for a tree over `size` entries."""
    num_leaves = self.num_leaves or min(
        round(math.sqrt(size)), size // _MIN_POINTS_PER_LEAF)
    num_leaves = max(1, min(num_leaves, size))
    to_search = self.leaves_to_search or max(
        math.ceil(num_leaves / 3), _MIN_LEAVES_TO_SEARCH)
    return num_leaves, min(to_search, num_leaves)

  @property
  def reorder_size(self) -> int:
    return self.reorder or 256


class ScannIndex:
  """ScaNN searcher over the vectors of a `VectorTable` it keeps in step."""

  def __init__(self, dim: int, options: TreeOptions):
    self._table = _vectors.VectorTable(dim)
    self._options = options
    self._is_tree = False
    self._trained_size = 0
    self._changes = 0
    self._searcher = self._build()

  @property
  def search_mode(self) -> str:
    return "tree" if self._is_tree else "brute_force"

  @property
  def trained_size(self) -> int:
    """Entries the current tree was trained on (0 in the brute-force regime)."""
    return self._trained_size

  def add(self, entry_ids: np.ndarray, vectors: np.ndarray) -> None:
    self._table.append(entry_ids, vectors)
    self._changes += len(entry_ids)
    if not self._rebuild_if_due():
      self._searcher.upsert([str(i) for i in entry_ids.tolist()], vectors,
                            batch_size=256)

  def replace(self, entry_id: int, vector: np.ndarray) -> None:
    self._table.assign(entry_id, vector)
    self._changes += 1
    if not self._rebuild_if_due():
      self._searcher.upsert([str(entry_id)], vector[None])

  def remove(self, entry_id: int) -> None:
    self._table.remove(entry_id)
    self._changes += 1
    if not self._rebuild_if_due():
      self._searcher.delete([str(entry_id)])

  def search(self, queries: np.ndarray,
             k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Top-k (ids, scores) per query [Q, D]; see `VectorTable.rerank`."""
    num_candidates = min(len(self._table), k + _vectors.TIE_SLACK)
    pre_reorder = (max(self._options.reorder_size, num_candidates)
                   if self._is_tree else None)
    docids, scores = self._searcher.search_batched(
        queries, final_num_neighbors=num_candidates,
        pre_reorder_num_neighbors=pre_reorder)
    # A tree may find fewer than asked; ScaNN pads those slots with NaN scores.
    found = np.isfinite(scores)
    candidate_rows = [
        self._table.rows_of(
            [int(d) for d, ok in zip(row_docids, row_found) if ok])
        for row_docids, row_found in zip(docids, found)
    ]
    return self._table.rerank(queries, candidate_rows, k)

  def _rebuild_if_due(self) -> bool:
    """Applies the rebuild rule of the module docstring; True if it rebuilt."""
    size = len(self._table)
    if self._is_tree:
      due = (size < self._options.threshold // 2 or self._changes
             >= self._options.rebuild_fraction * self._trained_size)
    else:
      due = size >= self._options.threshold
    if due:
      self._searcher = self._build()
    return due

  def _build(self):
    """A fresh searcher over the whole table, in the regime its size calls for."""
    vectors = self._table.vectors
    size = len(vectors)
    builder = scann.scann_ops_pybind.builder(vectors, 10, "dot_product")
    self._is_tree = size >= self._options.threshold
    if self._is_tree:
      num_leaves, leaves_to_search = self._options.leaves_for(size)
      # Spherical k-means (unit centroids): upsert assigns a vector to its squared-L2
      # nearest centroid while queries rank leaves by dot product. For our unit vectors
      # those agree only when centroids are unit too; with ScaNN's default (generic)
      # centroids, an entry updated to an outlying direction landed in a leaf its own
      # query never searched.
      builder = builder.tree(num_leaves, leaves_to_search, spherical=True).score_ah(
          _AH_DIMS_PER_BLOCK,
          anisotropic_quantization_threshold=_AH_ANISOTROPIC_THRESHOLD,
      ).reorder(self._options.reorder_size)
    else:
      builder = builder.score_brute_force()
    self._trained_size = size if self._is_tree else 0
    self._changes = 0
    return builder.build(docids=[str(i) for i in self._table.ids.tolist()])
