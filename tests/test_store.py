"""MemoryStore against a pure-Python brute-force model, on both backends."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from atommem_jax.memory import _scann_backend
from atommem_jax.memory import store as store_lib

DIM = 16


class BruteForceModel:
  """The store's contract in plain Python: float64 cosine, ties to the lower id."""

  def __init__(self, max_entries=None):
    self.max_entries = max_entries
    self.entries = {}  # id -> (text, unit vector as a tuple of floats)
    self.next_id = 0

  @staticmethod
  def unit(vector):
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return tuple(x / norm for x in vector)

  def create(self, texts, embeddings):
    if (self.max_entries is not None and
        len(self.entries) + len(texts) > self.max_entries):
      raise store_lib.StoreFullError()
    ids = []
    for text, vector in zip(texts, embeddings):
      self.entries[self.next_id] = (text, self.unit(vector.tolist()))
      ids.append(self.next_id)
      self.next_id += 1
    return ids

  def update(self, entry_id, text, embedding):
    self.entries[entry_id] = (text, self.unit(embedding.tolist()))

  def delete(self, entry_id):
    del self.entries[entry_id]

  def read(self, queries, k):
    results = []
    for query in queries:
      query = self.unit(query.tolist())
      scored = [(-math.fsum(a * b for a, b in zip(query, vector)), entry_id)
                for entry_id, (_, vector) in self.entries.items()]
      results.append([(entry_id, -neg_score)
                      for neg_score, entry_id in sorted(scored)[:k]])
    return results


def assert_same_reads(store_results, model_results):
  assert len(store_results) == len(model_results)
  for got, want in zip(store_results, model_results):
    assert [r.id for r in got] == [entry_id for entry_id, _ in want]
    np.testing.assert_allclose([r.score for r in got], [s for _, s in want],
                               atol=1e-5)


def run_random_ops(seed, num_ops=70, max_entries=None):
  """Interleaved CRUD on scann, exact and the model; checks them after each op."""
  rng = random.Random(seed)
  np_rng = np.random.default_rng(seed)
  stores = [
      store_lib.MemoryStore(DIM, backend=backend, max_entries=max_entries)
      for backend in ("scann", "exact")
  ]
  model = BruteForceModel(max_entries)
  seen_vectors = [np_rng.normal(size=DIM)]
  all_ids = set()

  def new_vector():
    # Repeat an earlier vector a quarter of the time: equal texts embed equally,
    # and their exact ties must go to the lower id.
    if rng.random() < 0.25:
      return rng.choice(seen_vectors).copy()
    vector = np_rng.normal(size=DIM)
    seen_vectors.append(vector)
    return vector

  for _ in range(num_ops):
    op = rng.choice(["create", "create", "update", "delete", "read"])
    live_ids = sorted(model.entries)
    if op == "create":
      n = rng.randint(0, 5)
      texts = [f"text {rng.random():.6f}" for _ in range(n)]
      embeddings = np.array([new_vector() for _ in range(n)]).reshape(n, DIM)
      try:
        want = model.create(texts, embeddings)
      except store_lib.StoreFullError:
        for store in stores:
          with pytest.raises(store_lib.StoreFullError):
            store.create(texts, embeddings)
        continue
      for store in stores:
        assert store.create(texts, embeddings) == want
      assert not all_ids & set(want)
      assert all(i > max(all_ids, default=-1) for i in want)
      all_ids.update(want)
    elif op == "update" and live_ids:
      entry_id = rng.choice(live_ids)
      embedding = new_vector()
      model.update(entry_id, "updated", embedding)
      for store in stores:
        store.update(entry_id, "updated", embedding)
    elif op == "delete" and live_ids:
      entry_id = rng.choice(live_ids)
      model.delete(entry_id)
      for store in stores:
        store.delete(entry_id)
    queries = np.stack([new_vector() for _ in range(rng.randint(1, 3))])
    k = rng.randint(1, 12)
    want = model.read(queries, k)
    for store in stores:
      assert store.search_mode in ("brute_force", "exact")
      assert_same_reads(store.read(queries, k), want)
      assert store.entries() == [
          store_lib.MemoryEntry(i, text)
          for i, (text, _) in sorted(model.entries.items())
      ]
      assert len(store) == len(model.entries)
      assert store.full == (max_entries is not None and
                            len(model.entries) >= max_entries)


@pytest.mark.parametrize("seed", range(12))
def test_random_ops_match_brute_force_model(seed):
  run_random_ops(seed)


@pytest.mark.parametrize("seed", range(4))
def test_random_ops_with_cap_match_brute_force_model(seed):
  run_random_ops(100 + seed, max_entries=12)


@pytest.mark.parametrize("backend", ["scann", "exact"])
def test_read_on_empty_store(backend):
  store = store_lib.MemoryStore(DIM, backend=backend)
  queries = np.ones((2, DIM))
  assert store.read(queries) == [[], []]
  (entry_id,) = store.create(["a"], np.ones((1, DIM)))
  store.delete(entry_id)
  assert store.read(queries) == [[], []]
  assert not store.entries()


@pytest.mark.parametrize("backend", ["scann", "exact"])
def test_k_larger_than_store_returns_all_best_first(backend):
  store = store_lib.MemoryStore(4, backend=backend)
  store.create(["x", "y", "z"], np.eye(4)[:3] + 0.1)
  (results,) = store.read(np.array([[0.0, 1.0, 0.0, 0.0]]), k=6)
  assert [r.text for r in results] == ["y", "x", "z"]
  assert results[0].score == pytest.approx(1.1 / math.sqrt(1.1**2 + 3 * 0.01))


@pytest.mark.parametrize("backend", ["scann", "exact"])
def test_ids_stable_and_never_reused(backend):
  store = store_lib.MemoryStore(4, backend=backend)
  assert store.create(["a", "b", "c"], np.eye(4)[:3]) == [0, 1, 2]
  store.delete(2)
  store.update(0, "a2", np.eye(4)[3])
  assert store.create(["d"], np.eye(4)[2:3]) == [3]
  assert store.get(0) == store_lib.MemoryEntry(0, "a2")
  assert [e.id for e in store.entries()] == [0, 1, 3]
  (results,) = store.read(np.eye(4)[3:], k=1)
  assert results[0].id == 0 and results[0].score == pytest.approx(1.0)


@pytest.mark.parametrize("backend", ["scann", "exact"])
def test_cap_raises_store_full_and_keeps_store(backend):
  store = store_lib.MemoryStore(4, backend=backend, max_entries=2)
  store.create(["a"], np.eye(4)[:1])
  assert not store.full
  with pytest.raises(store_lib.StoreFullError, match="max_entries=2"):
    store.create(["b", "c"], np.eye(4)[1:3])
  assert len(store) == 1
  store.create(["b"], np.eye(4)[1:2])
  assert store.full
  store.delete(0)
  assert not store.full


@pytest.mark.parametrize("backend", ["scann", "exact"])
def test_errors_name_the_problem(backend):
  store = store_lib.MemoryStore(4, backend=backend)
  store.create(["a"], np.ones((1, 4)))
  for call in (lambda: store.update(7, "x", np.ones(4)),
               lambda: store.delete(7), lambda: store.get(7)):
    with pytest.raises(KeyError, match="id 7"):
      call()
  with pytest.raises(ValueError, match=r"shape \[n, 4\], got \[1, 3\]"):
    store.create(["b"], np.ones((1, 3)))
  with pytest.raises(ValueError, match="row 1 has zero norm"):
    store.create(["b", "c"], np.array([[1.0, 0, 0, 0], [0, 0, 0, 0]]))
  with pytest.raises(ValueError, match="2 texts but 1 embedding rows"):
    store.create(["b", "c"], np.ones((1, 4)))
  with pytest.raises(TypeError, match="one str"):
    store.create("abc", np.ones((3, 4)))
  with pytest.raises(ValueError, match=r"shape \[4\]"):
    store.update(0, "x", np.ones((2, 4)))
  with pytest.raises(ValueError, match="k=0"):
    store.read(np.ones((1, 4)), k=0)
  assert store.entries() == [store_lib.MemoryEntry(0, "a")]


def test_bad_constructor_arguments():
  with pytest.raises(ValueError, match="backend='faiss'"):
    store_lib.MemoryStore(4, backend="faiss")
  with pytest.raises(ValueError, match="tree_threshold=10"):
    store_lib.MemoryStore(4, tree_threshold=10)


def clustered_unit_vectors(rng, n, dim, num_clusters, noise):
  """Points around random unit centres, mean cosine to their centre ~1/sqrt(1+noise²)."""
  centres = rng.normal(size=(num_clusters, dim))
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  points = (centres[rng.integers(0, num_clusters, n)] +
            rng.normal(size=(n, dim)) * noise / math.sqrt(dim))
  return points / np.linalg.norm(points, axis=1, keepdims=True)


def recall_at_k(store, reference, queries, k=6):
  got = store.read(queries, k)
  want = reference.read(queries, k)
  return np.mean([
      len({r.id for r in g} & {r.id for r in w}) / k for g, w in zip(got, want)
  ])


def test_tree_recall_at_10k_clustered():
  # Measured: recall@6 0.994 here (dim 128, 200 clusters, cosine to centre ~0.7,
  # queries are perturbed stored points; defaults: 100 leaves, 34 searched).
  rng = np.random.default_rng(0)
  n, dim = 10_000, 128
  data = clustered_unit_vectors(rng, n, dim, n // 50, noise=1.0)
  queries = data[rng.integers(0, n, 200)] + rng.normal(size=(200, dim)) / math.sqrt(dim)
  scann_store = store_lib.MemoryStore(dim)
  exact_store = store_lib.MemoryStore(dim, backend="exact")
  for store in (scann_store, exact_store):
    store.create([str(i) for i in range(n)], data)
  assert scann_store.search_mode == "tree"
  assert recall_at_k(scann_store, exact_store, queries) >= 0.9


@pytest.mark.slow
def test_tree_recall_at_100k_clustered_384d():
  rng = np.random.default_rng(1)
  n, dim = 100_000, 384
  data = clustered_unit_vectors(rng, n, dim, n // 50, noise=1.0)
  queries = data[rng.integers(0, n, 300)] + rng.normal(size=(300, dim)) / math.sqrt(dim)
  scann_store = store_lib.MemoryStore(dim)
  exact_store = store_lib.MemoryStore(dim, backend="exact")
  for store in (scann_store, exact_store):
    store.create([""] * n, data)
  assert scann_store.search_mode == "tree"
  assert recall_at_k(scann_store, exact_store, queries) >= 0.9


def test_tree_finds_entries_moved_off_the_trained_partitions():
  # Entries moved to random directions (outliers for partitions trained on clustered data)
  # must still be found by their own vector. With ScaNN's default (non-spherical) k-means,
  # upsert assigns a vector to the squared-L2-nearest centroid while queries rank leaves
  # by dot product; for an outlier those disagree and the entry sat in a leaf the query
  # never searched (about 1 in 10 such entries in this setup, every run).
  rng = np.random.default_rng(5)
  dim, n = 32, 640
  index = _scann_backend.ScannIndex(
      dim, _scann_backend.TreeOptions(threshold=512, rebuild_fraction=10.0))
  data = clustered_unit_vectors(rng, n, dim, 20, noise=1.0).astype(np.float32)
  index.add(np.arange(n), data)
  assert (index.search_mode, index.trained_size) == ("tree", n)
  moved = rng.normal(size=(200, dim)).astype(np.float32)
  moved /= np.linalg.norm(moved, axis=1, keepdims=True)
  for entry_id, vector in zip(range(0, 400, 2), moved):
    index.replace(entry_id, vector)
  assert index.trained_size == n  # Upserted into the old partitions, no retrain.
  found = [int(ids[0]) for ids, _ in index.search(moved, k=1)]
  assert found == list(range(0, 400, 2))


def test_brute_force_to_tree_and_back_stays_correct():
  rng = np.random.default_rng(2)
  dim, threshold = 32, 512
  data = clustered_unit_vectors(rng, 700, dim, 20, noise=1.0)
  scann_store = store_lib.MemoryStore(dim, tree_threshold=threshold)
  exact_store = store_lib.MemoryStore(dim, backend="exact")
  queries = data[rng.integers(0, 700, 50)]

  def create(rows):
    for store in (scann_store, exact_store):
      store.create([f"t{i}" for i in rows], data[rows])

  def same_as_exact():
    assert [[r.id for r in q] for q in scann_store.read(queries)] == [
        [r.id for r in q] for q in exact_store.read(queries)
    ]

  create(range(0, 400))
  assert scann_store.search_mode == "brute_force"
  same_as_exact()
  for i in range(400, 512):  # One at a time: the switch happens on an upsert path.
    create([i])
  assert scann_store.search_mode == "tree"
  create(range(512, 700))
  # A small tree (8 leaves, 4 searched) whose k-means differs from build to build: over
  # 100 builds recall@6 here was 0.883 at worst and 0.941 on average.
  assert recall_at_k(scann_store, exact_store, queries) >= 0.85

  # Updates and deletes inside the tree regime are seen by the next read.
  moved = rng.normal(size=(20, dim))
  for entry_id, vector in zip(range(0, 40, 2), moved):
    for store in (scann_store, exact_store):
      store.update(entry_id, "moved", vector)
  deleted = list(range(1, 200, 2))
  for entry_id in deleted:
    for store in (scann_store, exact_store):
      store.delete(entry_id)
  assert scann_store.search_mode == "tree"
  tops = scann_store.read(moved, k=1)
  assert [q[0].id for q in tops] == list(range(0, 40, 2))
  assert all(q[0].text == "moved" for q in tops)
  returned = {r.id for q in scann_store.read(queries, k=20) for r in q}
  assert not returned & set(deleted)

  # Below threshold // 2 it goes back to brute force and equals exact again.
  for entry_id in range(200, 600):
    for store in (scann_store, exact_store):
      store.delete(entry_id)
  assert len(scann_store) < threshold // 2
  assert scann_store.search_mode == "brute_force"
  same_as_exact()


def test_tree_retrains_after_rebuild_fraction_of_changes():
  rng = np.random.default_rng(3)
  dim = 16
  vectors = clustered_unit_vectors(rng, 600, dim, 10, noise=1.0).astype(np.float32)
  index = _scann_backend.ScannIndex(
      dim, _scann_backend.TreeOptions(threshold=256, rebuild_fraction=0.5))
  index.add(np.arange(200), vectors[:200])
  assert (index.search_mode, index.trained_size) == ("brute_force", 0)
  index.add(np.arange(200, 300), vectors[200:300])
  assert (index.search_mode, index.trained_size) == ("tree", 300)
  for i in range(300, 449):  # 149 changes < 0.5 * 300: no retrain yet.
    index.add(np.array([i]), vectors[i:i + 1])
  assert index.trained_size == 300
  index.remove(0)  # The 150th change.
  assert index.trained_size == 448
