"""Hugging Face Qwen3 checkpoints <-> our parameter pytree.

`load_hf` reads config.json and safetensors weights (one file, or shards with an index) without
torch and without pickle. The files are memory-mapped and every device shard is cut straight
from the HF tensors, so a process reads only the slices it holds (multi-host safe). `save_hf`
writes the layout transformers and vLLM expect for `Qwen3ForCausalLM`. A bare `Qwen3Model`
checkpoint (Qwen3-Embedding: names without "model.", no lm head) loads too; without an lm head
pass config_overrides={"tie_word_embeddings": True} unless its config.json already ties them.

Our layers are stacked on a leading L axis; HF stores one tensor per layer:
  q_proj [N*H, D] -> [L, D, N, H]     k_proj, v_proj [K*H, D] -> [L, D, K, H]
  o_proj [D, N*H] -> [L, N, H, D]     gate_proj, up_proj [F, D] -> [L, D, F]
  down_proj [D, F] -> [L, F, D]       lm_head [V, D] -> [D, V]; norms and embedding as is.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from typing import Any, Callable, Mapping

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from atommem_jax import fileio
from atommem_jax.model import _safetensors
from atommem_jax.model import qwen3
from atommem_jax.model import sharding
from atommem_jax.model.config import Qwen3Config

Params = dict[str, Any]

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja")
_SHARD_FILE = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
_HARMLESS = re.compile(r"(^|\.)rotary_emb\.inv_freq$")  # recomputed buffers some exports keep
_SAVE_DTYPES = ("float32", "bfloat16", "float16")
_MAX_LISTED = 20


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One leaf of our params and its HF tensor; a '{i}' in `hf_name` marks a stacked layer leaf."""

  path: tuple[str, ...]
  hf_name: str
  hf_shape: tuple[int, ...]
  shape: tuple[int, ...]  # ours, per layer for stacked leaves
  to_ours: Callable[[np.ndarray], np.ndarray]  # a view where numpy allows it
  to_hf: Callable[[np.ndarray], np.ndarray]

  @property
  def stacked(self) -> bool:
    return "{i}" in self.hf_name


def _identity(x: np.ndarray) -> np.ndarray:
  return x


def _transpose(x: np.ndarray) -> np.ndarray:
  return x.T


def _entries(config: Qwen3Config) -> list[_Entry]:
  """All leaves in transformers' order: embedding, one layer's tensors, final norm, lm_head."""
  d, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
  n, k, h = config.num_attention_heads, config.num_key_value_heads, config.head_dim
  layer = "model.layers.{i}."

  def in_proj(name: str, heads: int) -> list[_Entry]:
    path = ("layers", "attn", name)
    entries = [_Entry(path + ("kernel",), f"{layer}self_attn.{name}.weight", (heads * h, d),
                      (d, heads, h), lambda w: w.reshape(heads, h, d).transpose(2, 0, 1),
                      lambda x: x.transpose(1, 2, 0).reshape(heads * h, d))]
    if config.attention_bias:
      entries.append(_Entry(path + ("bias",), f"{layer}self_attn.{name}.bias", (heads * h,),
                            (heads, h), lambda b: b.reshape(heads, h), lambda x: x.reshape(-1)))
    return entries

  def norm(path: tuple[str, ...], hf_name: str, size: int) -> _Entry:
    return _Entry(path + ("scale",), hf_name, (size,), (size,), _identity, _identity)

  def dense(path: tuple[str, ...], hf_name: str, hf_shape: tuple[int, int]) -> _Entry:
    return _Entry(path + ("kernel",), hf_name, hf_shape, hf_shape[::-1], _transpose, _transpose)

  entries = [_Entry(("embedder", "embedding"), "model.embed_tokens.weight", (v, d), (v, d),
                    _identity, _identity)]
  entries += in_proj("q_proj", n) + in_proj("k_proj", k) + in_proj("v_proj", k)
  entries.append(_Entry(("layers", "attn", "o_proj", "kernel"), f"{layer}self_attn.o_proj.weight",
                        (d, n * h), (n, h, d), lambda w: w.reshape(d, n, h).transpose(1, 2, 0),
                        lambda x: x.transpose(2, 0, 1).reshape(d, n * h)))
  if config.attention_bias:
    entries.append(_Entry(("layers", "attn", "o_proj", "bias"), f"{layer}self_attn.o_proj.bias",
                          (d,), (d,), _identity, _identity))
  entries += [
      norm(("layers", "attn", "q_norm"), f"{layer}self_attn.q_norm.weight", h),
      norm(("layers", "attn", "k_norm"), f"{layer}self_attn.k_norm.weight", h),
      dense(("layers", "mlp", "gate_proj"), f"{layer}mlp.gate_proj.weight", (f, d)),
      dense(("layers", "mlp", "up_proj"), f"{layer}mlp.up_proj.weight", (f, d)),
      dense(("layers", "mlp", "down_proj"), f"{layer}mlp.down_proj.weight", (d, f)),
      norm(("layers", "input_norm"), f"{layer}input_layernorm.weight", d),
      norm(("layers", "post_attn_norm"), f"{layer}post_attention_layernorm.weight", d),
      norm(("final_norm",), "model.norm.weight", d),
  ]
  if not config.tie_word_embeddings:
    entries.append(dense(("lm_head",), "lm_head.weight", (v, d)))
  return entries


def _hf_names(config: Qwen3Config) -> dict[str, tuple[_Entry, int | None]]:
  """HF tensor name -> (entry, layer index or None), in transformers' state_dict order."""
  entries = _entries(config)
  layer_entries = [e for e in entries if e.stacked]
  ordered = [(entries[0], None)]
  ordered += [(e, i) for i in range(config.num_hidden_layers) for e in layer_entries]
  ordered += [(e, None) for e in entries[1:] if not e.stacked]
  return {e.hf_name.format(i=i): (e, i) for e, i in ordered}


def _listed(names: list[str]) -> str:
  shown = ", ".join(names[:_MAX_LISTED])
  return shown + (f", ... ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


def _check_tensors(config: Qwen3Config, tensors: Mapping[str, np.ndarray],
                   files: Mapping[str, str], source: str) -> None:
  """Raises one error listing missing, unexpected and misshapen tensors, if there are any."""
  expected = _hf_names(config)
  missing = [name for name in expected if name not in tensors]
  unexpected = [
      name for name in tensors
      if name not in expected and not _HARMLESS.search(name)
      and not (config.tie_word_embeddings and name == "lm_head.weight")]
  misshapen = [
      f"{name} in {files.get(name, source)}: expected {entry.hf_shape}, found "
      f"{tuple(tensors[name].shape)}"
      for name, (entry, _) in expected.items()
      if name in tensors and tuple(tensors[name].shape) != entry.hf_shape]
  problems = []
  if missing:
    problems.append(f"missing tensors ({len(missing)}) in {source}: {_listed(missing)}")
  if unexpected:
    located = [f"{name} in {files.get(name, source)}" for name in unexpected]
    problems.append(f"unexpected tensors ({len(unexpected)}): {_listed(located)}")
  if misshapen:
    problems.append(f"tensors whose shape does not match the config: {_listed(misshapen)}")
  if problems:
    raise ValueError(
        f"{source}: the weights do not match the Qwen3 config (hidden_size={config.hidden_size}, "
        f"intermediate_size={config.intermediate_size}, layers={config.num_hidden_layers}, "
        f"heads={config.num_attention_heads}/{config.num_key_value_heads}, "
        f"head_dim={config.head_dim}, vocab_size={config.vocab_size}, "
        f"tie_word_embeddings={config.tie_word_embeddings}, "
        f"attention_bias={config.attention_bias}); check that config.json belongs to these "
        "weights.\n  " + "\n  ".join(problems))


@dataclasses.dataclass(frozen=True)
class _Source:
  """One leaf of our params, cut lazily from HF tensors (one per layer when stacked)."""

  entry: _Entry
  tensors: tuple[np.ndarray, ...]

  @property
  def shape(self) -> tuple[int, ...]:
    return (len(self.tensors),) + self.entry.shape if self.entry.stacked else self.entry.shape

  def read(self, index: tuple[slice, ...], dtype: np.dtype) -> np.ndarray:
    """leaf[index] as a fresh array of `dtype`: touches only the bytes of that slice."""
    if not self.entry.stacked:
      return self.entry.to_ours(self.tensors[0])[index].astype(dtype)
    layers = range(len(self.tensors))[index[0]]
    return np.stack([self.entry.to_ours(self.tensors[i])[index[1:]] for i in layers]).astype(dtype)


def _sources(config: Qwen3Config, tensors: Mapping[str, np.ndarray]) -> Params:
  """Our params tree with a `_Source` at each leaf; `tensors` must pass `_check_tensors`."""
  tree: Params = {}
  for entry in _entries(config):
    if entry.stacked:
      layers = tuple(tensors[entry.hf_name.format(i=i)] for i in range(config.num_hidden_layers))
    else:
      layers = (tensors[entry.hf_name],)
    node = tree
    for key in entry.path[:-1]:
      node = node.setdefault(key, {})
    node[entry.path[-1]] = _Source(entry, layers)
  return tree


def _full_index(shape: tuple[int, ...]) -> tuple[slice, ...]:
  return (slice(None),) * len(shape)


def hf_state_dict_to_params(config: Qwen3Config, state_dict: Mapping[str, np.ndarray],
                            dtype: Any = None) -> Params:
  """HF Qwen3 tensors (numpy, by HF name) -> our params (numpy, stacked layers).

  Args:
    config: the model the tensors belong to.
    state_dict: HF name -> array; rotary inv_freq buffers and a tied lm_head.weight are ignored.
    dtype: dtype of the returned arrays; None keeps each tensor's own dtype.

  Raises:
    ValueError: listing missing, unexpected and misshapen tensors.
  """
  _check_tensors(config, state_dict, {}, "state_dict")
  return jax.tree.map(
      lambda s: s.read(_full_index(s.shape), np.dtype(dtype or s.tensors[0].dtype)),
      _sources(config, state_dict))


def params_to_hf_state_dict(config: Qwen3Config, params: Params) -> dict[str, np.ndarray]:
  """Our params -> HF Qwen3 tensors by name, in transformers' order (views where possible).

  Raises:
    ValueError: naming each leaf of `params` that is missing, unexpected or misshapen.
  """
  flat = {tuple(k.key for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  entries = _entries(config)

  def stacked_shape(entry: _Entry) -> tuple[int, ...]:
    return (config.num_hidden_layers,) + entry.shape if entry.stacked else entry.shape

  problems = [f"missing leaf {'/'.join(e.path)} of shape {stacked_shape(e)}"
              for e in entries if e.path not in flat]
  problems += [f"leaf {'/'.join(e.path)} has shape {flat[e.path].shape}, expected "
               f"{stacked_shape(e)}"
               for e in entries if e.path in flat and flat[e.path].shape != stacked_shape(e)]
  known = {e.path for e in entries}
  problems += [f"unexpected leaf {'/'.join(path)} (tie_word_embeddings="
               f"{config.tie_word_embeddings}, attention_bias={config.attention_bias})"
               for path in flat if path not in known]
  if problems:
    raise ValueError("params do not match the Qwen3 config:\n  " + "\n  ".join(problems))
  state_dict = {}
  for name, (entry, layer) in _hf_names(config).items():
    leaf = flat[entry.path]
    state_dict[name] = entry.to_hf(leaf if layer is None else leaf[layer])
  return state_dict


def _read_json(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None


def _read_checkpoint(directory: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Memmapped tensors by HF name, and the file each one lives in."""
  single = os.path.join(directory, SINGLE_FILE)
  index_path = os.path.join(directory, INDEX_FILE)
  if os.path.isfile(single):
    tensors = _safetensors.read(single)
    return tensors, dict.fromkeys(tensors, single)
  if not os.path.isfile(index_path):
    pickled = sorted(os.path.basename(p) for pattern in ("*.bin", "*.pt", "*.pth")
                     for p in glob.glob(os.path.join(directory, pattern)))
    hint = (f"; found {pickled}: pickled checkpoints are never loaded, convert them to "
            "safetensors first" if pickled else "")
    raise FileNotFoundError(f"{directory}: neither {SINGLE_FILE} nor {INDEX_FILE} exists{hint}")
  weight_map = _read_json(index_path)
  weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
  if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
    raise ValueError(f"{index_path}: expected a 'weight_map' object of tensor name -> shard file")
  shards = {}
  for name, shard in weight_map.items():
    if shard in shards:
      continue
    shard_path = os.path.join(directory, shard)
    if os.path.basename(shard) != shard or not os.path.isfile(shard_path):
      raise FileNotFoundError(
          f"{index_path}: shard {shard!r} (holding {name}) is not a file in {directory}; the "
          "checkpoint is incomplete")
    shards[shard] = _safetensors.read(shard_path)
  tensors, files = {}, {}
  for name, shard in weight_map.items():
    if name not in shards[shard]:
      raise ValueError(f"{index_path}: tensor {name} is mapped to {shard}, which does not hold it")
    tensors[name] = shards[shard][name]
    files[name] = os.path.join(directory, shard)
  return tensors, files


def _with_model_prefix(tensors: dict[str, np.ndarray], files: dict[str, str]
                       ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """A bare `Qwen3Model` checkpoint's tensors under `Qwen3ForCausalLM` names ("model." added)."""
  if "embed_tokens.weight" not in tensors or any(n.startswith("model.") for n in tensors):
    return tensors, files
  return ({f"model.{name}": t for name, t in tensors.items()},
          {f"model.{name}": f for name, f in files.items()})


def load_hf(path: str, dtype: Any = jnp.float32, *, mesh: jax.sharding.Mesh | None = None,
            rules: sharding.Rules | None = None, config_overrides: Mapping[str, Any] | None = None,
            ) -> tuple[Qwen3Config, Params]:
  """Loads a HF Qwen3 checkpoint directory into our config and params.

  Args:
    path: directory with config.json and model.safetensors or model.safetensors.index.json;
      a URL (gs://...) is first copied to a local temporary directory.
    dtype: parameter dtype; tensors stored in bf16, fp16 or fp32 are converted to it and
      config.param_dtype is set to match.
    mesh: when given, each parameter is created with its NamedSharding on this mesh and each
      process reads only the slices its devices hold; otherwise on the default device.
    rules: logical axis rules for the mesh (sharding.DEFAULT_RULES when None).
    config_overrides: Qwen3Config fields to set, e.g. {"remat": "full", "dtype": "bfloat16"};
      param_dtype always follows `dtype`.

  Returns:
    (config, params) with params in the layout of `atommem_jax.model.qwen3`.
  """
  if fileio.is_remote(path):
    if not fileio.isdir(path):
      raise FileNotFoundError(f"{path}: not a directory; expected a HF checkpoint directory")
    with fileio.local_dir_to_read(path) as local:
      return load_hf(local, dtype, mesh=mesh, rules=rules, config_overrides=config_overrides)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: not a directory; expected a HF checkpoint directory")
  config_path = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{config_path}: missing; a HF checkpoint needs its config.json")
  hf_config = _read_json(config_path)
  if not isinstance(hf_config, dict):
    raise ValueError(f"{config_path}: expected a JSON object")
  param_dtype = np.dtype(dtype)
  overrides = {**(config_overrides or {}), "param_dtype": param_dtype.name}
  config = Qwen3Config.from_hf_dict(hf_config, source=config_path, **overrides)
  tensors, files = _with_model_prefix(*_read_checkpoint(path))
  _check_tensors(config, tensors, files, path)
  sources = _sources(config, tensors)
  if mesh is None:
    return config, jax.tree.map(
        lambda s: jax.device_put(s.read(_full_index(s.shape), param_dtype)), sources)
  shardings = qwen3.param_shardings(config, mesh, rules)
  return config, jax.tree.map(
      lambda s, spec: jax.make_array_from_callback(
          s.shape, spec, lambda index: s.read(index, param_dtype)),
      sources, shardings)


def _to_host(x: Any, dtype: np.dtype) -> np.ndarray:
  """A leaf as a numpy array of `dtype`, gathered from all processes when it spans hosts."""
  if isinstance(x, jax.Array):
    x = x.astype(dtype)
    if not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
  return np.asarray(x, dtype)


def _write_json(path: str, obj: Any) -> None:
  with fileio.atomic_open(path) as f:
    f.write((json.dumps(obj, indent=2) + "\n").encode())


def _write_weights(directory: str, state_dict: Mapping[str, np.ndarray],
                   max_shard_bytes: int) -> None:
  """model.safetensors, or numbered shards plus an index; removes stale weight files."""
  shards: list[dict[str, np.ndarray]] = [{}]
  shard_bytes = 0
  for name, array in state_dict.items():
    if shards[-1] and shard_bytes + array.nbytes > max_shard_bytes:
      shards.append({})
      shard_bytes = 0
    shards[-1][name] = array
    shard_bytes += array.nbytes
  metadata = {"format": "pt"}
  if len(shards) == 1:
    _safetensors.write(os.path.join(directory, SINGLE_FILE), state_dict, metadata)
    written = {SINGLE_FILE}
  else:
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
      _safetensors.write(os.path.join(directory, name), shard, metadata)
    _write_json(os.path.join(directory, INDEX_FILE), {
        "metadata": {"total_size": sum(a.nbytes for a in state_dict.values())},
        "weight_map": {tensor: name for name, shard in zip(names, shards) for tensor in shard},
    })
    written = set(names) | {INDEX_FILE}
  for name in os.listdir(directory):
    if _is_weight_file(name) and name not in written:
      os.remove(os.path.join(directory, name))


def _is_weight_file(name: str) -> bool:
  return name in (SINGLE_FILE, INDEX_FILE) or bool(_SHARD_FILE.fullmatch(name))


def save_hf(config: Qwen3Config, params: Params, path: str, tokenizer_dir: str | None = None, *,
            dtype: Any = None, max_shard_bytes: int = 5 * 2**30) -> None:
  """Writes a HF Qwen3 checkpoint directory that transformers and vLLM load.

  Every file is written under a temporary name and renamed, so a crash never leaves a partial
  file under a final name. With several processes every one must call this (parameters are
  gathered collectively); only process 0 writes.

  Args:
    config: the model config; written as config.json and generation_config.json.
    params: our params (jax or numpy arrays, possibly sharded across hosts).
    path: output directory, created if needed; stale weight files in it are removed. A URL
      (gs://...) is written in a local temporary directory and uploaded when complete.
    tokenizer_dir: directory (or URL) whose tokenizer files (TOKENIZER_FILES) are copied along.
    dtype: dtype of the saved tensors (float32, bfloat16 or float16); None keeps the params'.
    max_shard_bytes: above this size the weights are split into shards plus an index.
  """
  save_dtype = np.dtype(dtype if dtype is not None else params["embedder"]["embedding"].dtype)
  if save_dtype.name not in _SAVE_DTYPES:
    raise ValueError(f"save_hf: dtype {save_dtype.name} is not one of {_SAVE_DTYPES}")
  tokenizer_files = []
  if tokenizer_dir is not None:
    tokenizer_files = [fileio.join(tokenizer_dir, name) for name in TOKENIZER_FILES
                       if fileio.isfile(fileio.join(tokenizer_dir, name))]
    if not tokenizer_files:
      raise FileNotFoundError(
          f"{tokenizer_dir}: no tokenizer files found (looked for {', '.join(TOKENIZER_FILES)})")
  state_dict = params_to_hf_state_dict(
      config, jax.tree.map(lambda x: _to_host(x, save_dtype), params))
  if jax.process_index() == 0:
    with fileio.local_dir_to_write(path, stale=_is_weight_file) as local:
      os.makedirs(local, exist_ok=True)
      _write_weights(local, state_dict, max_shard_bytes)
      _write_json(os.path.join(local, CONFIG_FILE),
                  config.to_hf_dict(torch_dtype=save_dtype.name))
      token_ids = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
                   "pad_token_id": config.pad_token_id}
      _write_json(os.path.join(local, GENERATION_CONFIG_FILE),
                  {key: value for key, value in token_ids.items() if value is not None})
      for source in tokenizer_files:
        with fileio.atomic_open(os.path.join(local, os.path.basename(source))) as dst:
          dst.write(fileio.read_bytes(source))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"save_hf {path}")
