"""Qwen3-Embedding through our Flax Qwen3: no torch at run time.

Qwen3-Embedding is a Qwen3 decoder without an lm head. A text's embedding is the final normed
hidden state [D] of its last real token, L2-normalised. The tokenizer appends <|endoftext|>
(the published tokenizer.json does it in its post-processor; for an older download whose
tokenizer does not, we append it as the model card's own code did), so that token is the one
pooled. Queries carry the instruction "Instruct: {task}\\nQuery:" in front; documents none.

The directory is a sentence-transformers / Hugging Face one: config.json, model.safetensors
(read by `model.hf.load_hf`), tokenizer.json, and optionally modules.json (which must be
Transformer, last-token Pooling, Normalize) and sentence_bert_config.json (max_seq_length).

Each call embeds all its texts in a few jitted forward passes: texts are sorted by length and
padded (on the right) to power-of-two length buckets, with as many rows per pass as fit a token
budget (rows a power of four, or the budget's rows), so a run compiles a bounded set of shapes. Placement
(`DEVICES`): "host", one host CPU device; "accelerator", the first local device of the default
backend (a GPU or TPU chip; the same host device on a CPU-only process); "auto" is "host"
(see `resolve_device`). One device, never the mesh: the env embeds from inside the rollout
loop's host callbacks, and a program over the devices that run the loop waits for them forever
(it hung on the 8-device CPU mesh).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tokenizers
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from atommem_jax import fileio
from atommem_jax.model import hf
from atommem_jax.model import qwen3
from atommem_jax.model import sharding
from atommem_jax.model.config import Qwen3Config

DEVICES = ("auto", "host", "accelerator")
DTYPES = ("float32", "bfloat16")
QUERY_PROMPT = "Instruct: {task}\nQuery:"
END_TOKEN = "<|endoftext|>"
DEFAULT_MAX_SEQ_LENGTH = 8192  # Qwen3-Embedding's sentence_bert_config.json
_MIN_BUCKET = 32


def resolve_device(device: str) -> str:
  """"auto" -> "host": the one placement tested inside the rollout loop (on the CPU mesh) and
  using no accelerator memory. On CPU, one device and the 8-device mesh took the same time per
  step (BENCHMARKS.md). On GPU/TPU "accelerator" is likely much faster for the 0.6B model, but
  it is unmeasured there and untested inside the loop (a program launched from a callback of
  a running program on the same chip)."""
  if device not in DEVICES:
    raise ValueError(f"Qwen3-Embedding device={device!r}; expected one of {DEVICES}")
  return "host" if device == "auto" else device


def last_token_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """[B, T, D] hidden states, [B, T] mask -> [B, D] at each row's last real token.

  Works for left and right padding alike (the last position whose mask is 1).
  """
  length = mask.shape[1]
  last = length - 1 - jnp.argmax(jnp.flip(mask.astype(jnp.int32), axis=1), axis=1)
  return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]


def embed_tokens(config: Qwen3Config, params: dict[str, Any], token_ids: jax.Array,
                 mask: jax.Array, mesh: Mesh | None = None) -> jax.Array:
  """Unit fp32 embeddings [B, D] of token_ids [B, T] with mask [B, T] (1 = real token)."""
  hidden, _ = qwen3.forward(config, params, token_ids, qwen3.positions_from_mask(mask),
                            attention_mask=mask, mesh=mesh, hidden_only=True)
  pooled = last_token_pool(hidden, mask).astype(jnp.float32)
  norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
  return pooled / jnp.maximum(norm, 1e-12)  # torch.nn.functional.normalize, as Normalize does


def _read_json(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: not a readable JSON file ({e})") from None


def _check_modules(directory: str) -> None:
  """Refuses a sentence-transformers pipeline other than Transformer, last-token Pooling,
  Normalize (its pooling or extra modules would give other vectors than ours)."""
  path = os.path.join(directory, "modules.json")
  if not os.path.isfile(path):
    return
  modules = _read_json(path)
  types = [m.get("type") for m in modules] if isinstance(modules, list) else None
  if [str(t).rsplit(".", 1)[-1] for t in types or ()] != ["Transformer", "Pooling", "Normalize"]:
    raise ValueError(f"{path}: modules {types} are not Qwen3-Embedding's [Transformer, Pooling, "
                     "Normalize]; use 'st:DIR' for other sentence-transformers models")
  if modules[0].get("path", "") != "":
    raise ValueError(f"{path}: the Transformer module must be the directory itself (path '')")
  pooling_path = os.path.join(directory, modules[1].get("path", ""), "config.json")
  pooling = _read_json(pooling_path) if os.path.isfile(pooling_path) else {}
  mode = pooling.get("pooling_mode") or [  # sentence-transformers < 6: one flag per mode
      key[len("pooling_mode_"):] for key, on in pooling.items() if key.startswith("pooling_mode_")
      and on]
  if mode not in ("lasttoken", ["lasttoken"]) or not pooling.get("include_prompt", True):
    raise ValueError(f"{pooling_path}: pooling {mode!r} (include_prompt="
                     f"{pooling.get('include_prompt', True)}); Qwen3-Embedding pools the last "
                     "token, prompt included")


def _max_seq_length(directory: str) -> int:
  """Tokens per text as sentence-transformers reads them: sentence_bert_config.json's
  max_seq_length (its files before v6), else tokenizer_config.json's model_max_length (v6),
  at most config.json's max_position_embeddings."""
  value, source = DEFAULT_MAX_SEQ_LENGTH, None
  for name, key in (("sentence_bert_config.json", "max_seq_length"),
                    ("tokenizer_config.json", "model_max_length")):
    path = os.path.join(directory, name)
    if os.path.isfile(path) and key in _read_json(path):
      value, source = _read_json(path)[key], f"{path}: {key}"
      break
  if not isinstance(value, int) or value < 2:
    raise ValueError(f"{source}={value!r}; expected an integer >= 2")
  limit = _read_json(os.path.join(directory, hf.CONFIG_FILE)).get("max_position_embeddings")
  return min(value, limit) if isinstance(limit, int) and limit >= 2 else value


def _load_tokenizer(directory: str, max_seq_length: int) -> tuple[tokenizers.Tokenizer, int, bool]:
  """(tokenizer truncating to max_seq_length, id of END_TOKEN, whether we must append it)."""
  path = os.path.join(directory, "tokenizer.json")
  tokenizer = tokenizers.Tokenizer.from_file(path)
  end_id = tokenizer.token_to_id(END_TOKEN)
  if end_id is None:
    raise ValueError(f"{path}: has no {END_TOKEN} token; not a Qwen3 tokenizer")
  tokenizer.no_padding()
  appends = tokenizer.encode("a").ids[-1:] == [end_id]
  tokenizer.enable_truncation(max_seq_length if appends else max_seq_length - 1)
  return tokenizer, end_id, not appends


def _power_of_two_at_least(n: int) -> int:
  return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def _power_of_four_at_least(n: int) -> int:
  power = 1
  while power < n:
    power *= 4
  return power


class Qwen3Embedder:
  """Qwen3-Embedding from a local directory (or URL), through `qwen3.forward`.

  Args:
    path: the model directory (see the module docstring).
    task: the retrieval task named in the query instruction.
    device: "auto", "host" or "accelerator" (`DEVICES`, `resolve_device`).
    dtype: "float32" or "bfloat16" weights and matmuls (pooling and norm stay fp32).
    max_seq_length: tokens per text, <|endoftext|> included (default: the directory's).
    max_batch_tokens: padded tokens per forward pass; bounds activation memory.
  """

  def __init__(self, path: str, *, task: str, device: str = "auto", dtype: str = "float32",
               max_seq_length: int | None = None, max_batch_tokens: int = 16384):
    if dtype not in DTYPES:
      raise ValueError(f"Qwen3-Embedding dtype={dtype!r}; expected one of {DTYPES}")
    self.device = resolve_device(device)
    if not fileio.isdir(path):
      raise FileNotFoundError(
          f"Qwen3-Embedding directory {path} does not exist; pass a local download of "
          "Qwen/Qwen3-Embedding-0.6B (config.json, model.safetensors, tokenizer.json)")
    placed_on = (jax.local_devices(backend="cpu") if self.device == "host"
                 else jax.local_devices())[0]
    self.mesh = Mesh(np.array([placed_on]).reshape(1, 1, 1), sharding.MESH_AXES)
    with fileio.local_dir_to_read(path) as local:
      missing = [name for name in (hf.CONFIG_FILE, "tokenizer.json")
                 if not os.path.isfile(os.path.join(local, name))]
      if missing:
        raise FileNotFoundError(f"Qwen3-Embedding directory {path}: missing {missing}; pass a "
                                "download of Qwen/Qwen3-Embedding-0.6B")
      _check_modules(local)
      self.max_seq_length = max_seq_length or _max_seq_length(local)
      self._tokenizer, self._end_id, self._append_end = _load_tokenizer(
          local, self.max_seq_length)
      overrides = {"tie_word_embeddings": True, "dtype": dtype}  # the lm head is never used
      self.config, self.params = hf.load_hf(local, jnp.dtype(dtype), mesh=self.mesh,
                                            config_overrides=overrides)
    self.path = path
    self.dim = self.config.hidden_size
    self.query_prefix = QUERY_PROMPT.format(task=task)
    self.max_batch_tokens = max_batch_tokens
    on_device = NamedSharding(self.mesh, PartitionSpec())
    self._forward = jax.jit(
        lambda params, ids, mask: embed_tokens(self.config, params, ids, mask, self.mesh),
        in_shardings=(qwen3.param_shardings(self.config, self.mesh), on_device, on_device),
        out_shardings=on_device)

  def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
    return self.embed(list(texts))

  def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
    return self.embed([self.query_prefix + text for text in texts])

  def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
    """The ids each text is embedded from: truncated, ending with <|endoftext|>."""
    encodings = self._tokenizer.encode_batch(list(texts))
    return [e.ids + [self._end_id] if self._append_end else e.ids for e in encodings]

  def bucket(self, length: int) -> int:
    """Padded length of a text of `length` tokens: a power of two >= 32, or max_seq_length."""
    return min(max(_MIN_BUCKET, _power_of_two_at_least(length)), self.max_seq_length)

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    """Unit float32 embeddings [n, D] of the texts as given (no instruction added)."""
    out = np.zeros((len(texts), self.dim), np.float32)
    ids = self.token_ids(texts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    start = 0
    while start < len(order):
      length = self.bucket(len(ids[order[start]]))
      most_rows = max(1, _power_of_two_at_least(self.max_batch_tokens // length + 1) // 2)
      group = [i for i in order[start:] if self.bucket(len(ids[i])) == length][:most_rows]
      rows = min(_power_of_four_at_least(len(group)), most_rows)
      tokens = np.zeros((rows, length), np.int32)
      mask = np.zeros((rows, length), np.int32)
      mask[len(group):, 0] = 1  # filler rows see one token, so no row attends to nothing
      for row, i in enumerate(group):
        tokens[row, :len(ids[i])] = ids[i]
        mask[row, :len(ids[i])] = 1
      out[group] = np.asarray(self._forward(self.params, tokens, mask))[:len(group)]
      start += len(group)
    return out
