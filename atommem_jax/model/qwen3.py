"""The Qwen3 dense decoder and its pure-function API: init, forward, logits, KV cache.

Parameters are a plain nested dict with the layers stacked on a leading L axis (nn.scan
layout), whether or not the forward scans; `unstack_layers` (and `unstack_cache`) split them
for CPU inference. Letters: B batch, T query length, S key (cache) length, D model dim,
K kv heads, H head dim, V vocab, L layers.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from atommem_jax.model import _layers
from atommem_jax.model import attention
from atommem_jax.model import sharding
from atommem_jax.model.config import Qwen3Config

Params = dict[str, Any]
Cache = dict[str, jax.Array]

_TOKENS = ("act_batch", "act_length")
_LOGITS = ("act_batch", "act_length", "act_vocab")
_CACHE_KV = ("layers", "act_batch", "act_length", "act_kv_heads", "head_dim")


class Embedder(nn.Module):
  """Token embedding table [V, D]; `decode` is the tied lm head."""

  config: Qwen3Config

  def setup(self):
    cfg = self.config
    self.embedding = self.param(
        "embedding",
        nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), ("vocab", "embed")),
        (cfg.vocab_size, cfg.hidden_size), cfg.jnp_param_dtype)

  def encode(self, token_ids: jax.Array) -> jax.Array:
    """[B, T] int -> [B, T, D] in the compute dtype."""
    return jnp.take(self.embedding, token_ids, axis=0).astype(self.config.jnp_dtype)

  def decode(self, x: jax.Array) -> jax.Array:
    """[B, T, D] -> fp32 logits [B, T, V]."""
    dtype = self.config.jnp_dtype
    return jnp.einsum("BTD,VD->BTV", x.astype(dtype), self.embedding.astype(dtype),
                      preferred_element_type=jnp.float32)


class Qwen3(nn.Module):
  """Embedding, L decoder layers, final RMSNorm, lm head (tied or not)."""

  config: Qwen3Config
  shard: sharding.ActivationSharding = sharding.ActivationSharding()
  unstacked_layers: bool = False  # params from `unstack_layers`: the layers run unrolled

  @nn.compact
  def __call__(self, token_ids: jax.Array, positions: jax.Array,
               mask: attention.AttentionMask, kv_cache: _layers.KvCache | None = None,
               cache_index: jax.Array | None = None, *, hidden_only: bool = False,
               ) -> tuple[jax.Array, _layers.KvCache | None]:
    """token_ids/positions [B, T], mask (which keys each query sees) -> (fp32 logits
    [B, T, V], stacked kv).

    hidden_only: return the final normed hidden states [B, T, D] instead of the logits
    (`lm_head` maps them to logits, e.g. a chunk of positions at a time).
    """
    cfg = self.config
    embedder = Embedder(cfg, name="embedder")
    x = self.shard(embedder.encode(token_ids), ("act_batch", "act_length", "act_embed"))
    per_layer_cache = kv_cache is not None and isinstance(kv_cache[0], tuple)
    if per_layer_cache and not self.unstacked_layers:
      raise ValueError("a per-layer KV cache (qwen3.unstack_cache) needs per-layer params "
                       "(qwen3.unstack_layers)")
    if self.unstacked_layers:
      caches = []
      for layer in range(cfg.num_hidden_layers):
        decoder = _layers.DecoderLayer(cfg, self.shard, name=f"layers_{layer}")
        if per_layer_cache:
          (x, layer_cache), _ = decoder((x, (kv_cache[0][layer], kv_cache[1][layer])),
                                        positions, mask, None, cache_index)
          caches.append(layer_cache)
        else:
          (x, kv_cache), _ = decoder((x, kv_cache), positions, mask, jnp.int32(layer),
                                     cache_index)
      if per_layer_cache:
        kv_cache = (tuple(k for k, _ in caches), tuple(v for _, v in caches))
    else:
      (x, kv_cache), _ = _layers.layer_stack(cfg)(cfg, self.shard, name="layers")(
          (x, kv_cache), positions, mask, jnp.arange(cfg.num_hidden_layers), cache_index)
    x = _layers.RMSNorm(cfg.rms_norm_eps, "norm", cfg.jnp_param_dtype, name="final_norm")(x)
    if hidden_only:
      return x, kv_cache
    if cfg.tie_word_embeddings:
      vocab_logits = embedder.decode(x)
    else:
      vocab_logits = _untied_head(cfg, name="lm_head")(x)
    return self.shard(vocab_logits, _LOGITS), kv_cache


def _untied_head(config: Qwen3Config, **kwargs) -> nn.Module:
  """The untied lm head: kernel [D, V], fp32 logits."""
  return _layers.Einsum("BTD,DV->BTV", (config.hidden_size, config.vocab_size),
                        ("embed", "vocab"), dtype=config.jnp_dtype,
                        param_dtype=config.jnp_param_dtype, out_dtype=jnp.float32, **kwargs)


def lm_head(config: Qwen3Config, params: Params, hidden: jax.Array) -> jax.Array:
  """fp32 logits [B, T, V] of final hidden states [B, T, D] (`forward(..., hidden_only=True)`).

  The same modules as the end of `Qwen3`: the tied embedding or the untied kernel.
  """
  if config.tie_word_embeddings:
    return Embedder(config).apply({"params": params["embedder"]}, hidden, method=Embedder.decode)
  return _untied_head(config).apply({"params": params["lm_head"]}, hidden)


def _init_fn(config: Qwen3Config):
  def init(rng: jax.Array) -> Any:
    ids = jnp.zeros((1, 1), jnp.int32)
    mask = attention.AttentionMask.causal(jnp.ones((1, 1), bool))
    return Qwen3(config).init(rng, ids, ids, mask)["params"]
  return init


def param_logical_axes(config: Qwen3Config) -> Params:
  """The params tree with each leaf replaced by its tuple of logical axis names."""
  boxed = jax.eval_shape(_init_fn(config), jax.random.key(0))
  specs = nn.get_partition_spec(boxed)
  return jax.tree.map(tuple, specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def param_shardings(config: Qwen3Config, mesh: Mesh,
                    rules: sharding.Rules | None = None) -> Params:
  """NamedSharding for every parameter (indivisible dimensions replicated)."""
  shapes = jax.eval_shape(lambda rng: nn.unbox(_init_fn(config)(rng)), jax.random.key(0))
  return sharding.logical_to_sharding(param_logical_axes(config), mesh,
                                      rules or sharding.DEFAULT_RULES, shapes)


def init_params(config: Qwen3Config, rng: jax.Array, mesh: Mesh | None = None,
                rules: sharding.Rules | None = None) -> Params:
  """Random params in config.param_dtype (HF init: normal(0.02), norms 1, biases 0).

  With a mesh every parameter is created directly in its sharding, never whole on one device.
  """
  init = jax.jit(lambda key: nn.unbox(_init_fn(config)(key)),
                 out_shardings=None if mesh is None else param_shardings(config, mesh, rules))
  return init(rng)


def init_cache(config: Qwen3Config, batch_size: int, max_len: int, dtype: Any = None) -> Cache:
  """Empty KV cache: k/v [L, B, S, K, H], mask [B, S] (slot holds a key), index (next slot)."""
  shape = (config.num_hidden_layers, batch_size, max_len, config.num_key_value_heads,
           config.head_dim)
  dtype = dtype or config.jnp_dtype
  return {
      "k": jnp.zeros(shape, dtype),
      "v": jnp.zeros(shape, dtype),
      "mask": jnp.zeros((batch_size, max_len), bool),
      "index": jnp.zeros((), jnp.int32),
  }


def cache_logical_axes() -> dict[str, tuple[str | None, ...]]:
  """Logical axis names of the cache leaves (for sharding a sampler's cache)."""
  return {"k": _CACHE_KV, "v": _CACHE_KV, "mask": _TOKENS, "index": ()}


def forward(config: Qwen3Config, params: Params, token_ids: jax.Array, positions: jax.Array,
            *, attention_mask: jax.Array | None = None, segment_ids: jax.Array | None = None,
            cache: Cache | None = None, mesh: Mesh | None = None,
            rules: sharding.Rules | None = None, hidden_only: bool = False
            ) -> tuple[jax.Array, Cache | None]:
  """Logits [B, T, V] fp32 for token_ids [B, T] at positions [B, T], and the updated cache.

  attention_mask [B, T]: 1 = real token. segment_ids [B, T]: packed sequences, 0 = padding;
  tokens attend only within their segment. Attention is causal by slot (token order).
  With a cache, the T tokens go to slots index..index+T-1 (the caller keeps
  index + T <= max_len) and attend to every valid earlier slot; the cache comes back with
  index += T. segment_ids cannot be combined with a cache. hidden_only: the final normed
  hidden states [B, T, D] instead of the logits (see `lm_head`). params may come from
  `unstack_layers` (inference: the layers then run unrolled, without remat).
  """
  batch, length = token_ids.shape
  valid = (jnp.ones((batch, length), bool) if attention_mask is None
           else attention_mask.astype(bool))
  if segment_ids is not None:
    if cache is not None:
      raise ValueError("forward: segment_ids (packed sequences) cannot be used with a KV "
                       "cache; decode each sequence in its own batch row instead")
    valid = valid & (segment_ids != 0)
  if cache is None:
    key_valid, kv_cache, index = valid, None, None
    mask = attention.AttentionMask.causal(valid, segment_ids)
  else:
    index = cache["index"]
    key_valid = jax.lax.dynamic_update_slice(cache["mask"], valid, (0, index))
    kv_cache = (cache["k"], cache["v"])
    mask = attention.AttentionMask(index + jnp.arange(length, dtype=jnp.int32), key_valid)
  shard = sharding.ActivationSharding(mesh, rules or sharding.DEFAULT_RULES)
  outputs, kv_cache = Qwen3(config, shard, unstacked_layers="layers" not in params).apply(
      {"params": params}, token_ids, positions, mask, kv_cache, index, hidden_only=hidden_only)
  if cache is None:
    return outputs, None
  new_cache = {"k": kv_cache[0], "v": kv_cache[1], "mask": key_valid, "index": index + length}
  return outputs, new_cache


def unstack_layers(params: Params) -> Params:
  """The params with the stacked "layers" [L, ...] split into "layers_0".."layers_{L-1}".

  `forward` runs such params with the layers unrolled, each reading its own arrays. For
  inference on CPU (the sampler's decode loop): there XLA copies a scanned layer's slice of
  the stacked weights at every step (about a tenth of a 0.1B decode step); these copies
  are made once. The copies double the layers' memory; accelerators keep the stack.
  """
  stacked = params["layers"]
  num_layers = jax.tree.leaves(stacked)[0].shape[0]
  layers = {f"layers_{i}": jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(num_layers)}
  return {**{k: v for k, v in params.items() if k != "layers"}, **layers}


def unstack_cache(cache: Cache) -> Cache:
  """The cache with k and v split into tuples of L per-layer [B, S, K, H] arrays.

  With `unstack_layers` params, each layer then updates and reads its own arrays in place:
  XLA:CPU otherwise copies the layer's slice of the stacked cache at every decode step
  (or, with the decode attention reading it, the whole stack). CPU inference only.
  """
  split = lambda x: tuple(x[i] for i in range(x.shape[0]))
  return {**cache, "k": split(cache["k"]), "v": split(cache["v"])}


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
  """[B, T] positions counting real tokens from 0 (left padding gets 0), like HF generate."""
  return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def logits(config: Qwen3Config, params: Params, token_ids: jax.Array,
           attention_mask: jax.Array | None = None, *, mesh: Mesh | None = None,
           rules: sharding.Rules | None = None) -> jax.Array:
  """fp32 logits [B, T, V] of a (left-)padded batch; positions follow the mask."""
  if attention_mask is None:
    attention_mask = jnp.ones(token_ids.shape, jnp.int32)
  out, _ = forward(config, params, token_ids, positions_from_mask(attention_mask),
                   attention_mask=attention_mask, mesh=mesh, rules=rules)
  return out


def sharded_forward_fn(config: Qwen3Config, mesh: Mesh, rules: sharding.Rules | None = None):
  """Returns fn(params, token_ids, positions, attention_mask=None, segment_ids=None) -> logits.

  Jitted with explicit in/out shardings: params as `param_shardings`, tokens over the batch
  axes, logits over batch and vocab. One compilation per input shape (and per None-ness of
  the optional inputs). On several hosts, pass global jax.Arrays (e.g. from
  jax.make_array_from_process_local_data), not numpy.
  """
  rules = rules or sharding.DEFAULT_RULES
  params_sharding = param_shardings(config, mesh, rules)

  def run(params, token_ids, positions, attention_mask, segment_ids):
    return forward(config, params, token_ids, positions, attention_mask=attention_mask,
                   segment_ids=segment_ids, mesh=mesh, rules=rules)[0]

  @functools.cache
  def compiled(batch: int, length: int):
    tokens = sharding.logical_to_sharding(_TOKENS, mesh, rules, (batch, length))
    out = sharding.logical_to_sharding(_LOGITS, mesh, rules, (batch, length, config.vocab_size))
    return jax.jit(run, in_shardings=(params_sharding, tokens, tokens, tokens, tokens),
                   out_shardings=out)

  def sharded_forward(params: Params, token_ids: jax.Array, positions: jax.Array,
                      attention_mask: jax.Array | None = None,
                      segment_ids: jax.Array | None = None) -> jax.Array:
    return compiled(*token_ids.shape)(params, token_ids, positions, attention_mask, segment_ids)

  return sharded_forward
