"""Qwen3 decoder blocks in flax.linen: RMSNorm, RoPE, GQA attention, SwiGLU MLP, layer.

Letters: B batch, T query length, S key length, D model dim, N query heads, K kv heads,
G = N // K query heads per kv head, H head dim, F mlp hidden, V vocab.
Parameters carry logical axis names (see sharding.py); the layer stack adds "layers".
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from atommem_jax.model import attention
from atommem_jax.model import sharding
from atommem_jax.model.config import Qwen3Config

KvCache = tuple[jax.Array, jax.Array]  # (k, v), each [L, B, S, K, H] (every layer's)
# or, for one layer of qwen3.unstack_cache, each [B, S, K, H]

_KERNEL_INIT = nn.initializers.normal(stddev=0.02)  # HF initializer_range
_HIDDEN = ("act_batch", "act_length", "act_embed")


class RMSNorm(nn.Module):
  """x / rms(x) * scale over the last axis, computed in fp32 (HF Qwen3RMSNorm)."""

  eps: float
  axis_name: str  # logical name of the normalised axis
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                             (self.axis_name,)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return scale.astype(x.dtype) * normed.astype(x.dtype)


class Einsum(nn.Module):
  """One kernel applied with one einsum, plus an optional bias over the output axes."""

  equation: str  # e.g. "BTD,DNH->BTNH"
  shape: tuple[int, ...]
  logical_axes: tuple[str, ...]
  bias_ndim: int = 0  # trailing kernel axes that the bias spans; 0 = no bias
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  out_dtype: Any = None  # None: self.dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.with_logical_partitioning(_KERNEL_INIT, self.logical_axes),
                        self.shape, self.param_dtype)
    y = jnp.einsum(self.equation, x.astype(self.dtype), kernel.astype(self.dtype),
                   preferred_element_type=self.out_dtype or self.dtype)
    if self.bias_ndim:
      bias = self.param("bias", nn.with_logical_partitioning(
          nn.initializers.zeros_init(), self.logical_axes[-self.bias_ndim:]),
                        self.shape[-self.bias_ndim:], self.param_dtype)
      y = y + bias.astype(y.dtype)
    return y


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotates x [B, T, N, H] by positions [B, T] (HF rotate_half: halves of H pair up)."""
  head_dim = x.shape[-1]
  inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  angles = positions.astype(jnp.float32)[:, :, None, None] * inv_freq  # [B, T, 1, H/2]
  cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


class Attention(nn.Module):
  """Grouped-query attention with per-head q/k RMSNorm before RoPE (Qwen3)."""

  config: Qwen3Config
  shard: sharding.ActivationSharding = sharding.ActivationSharding()

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, mask: attention.AttentionMask,
               kv_cache: KvCache | None = None, cache_index: jax.Array | None = None,
               layer: jax.Array | None = None) -> tuple[jax.Array, KvCache | None]:
    """x [B, T, D], positions [B, T]; kv_cache (all layers') gets k/v at [layer, :, cache_index].

    The stacked cache is updated in place (a loop-carried buffer): no layer's cache is
    copied whole, as a scan's stacked output would be at every decode step. layer None:
    kv_cache is this layer's own [B, S, K, H] pair (qwen3.unstack_cache), written at
    [:, cache_index] and read whole, with no slice of a stack to copy.

    Attention is computed by config.attention (see attention.py) over the mask description.
    """
    cfg = self.config
    d, n, k, h = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    qkv_bias = 2 if cfg.attention_bias else 0  # bias over (heads, head_dim)
    o_bias = 1 if cfg.attention_bias else 0  # bias over D
    kw = dict(dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype)
    q = Einsum("BTD,DNH->BTNH", (d, n, h), ("embed", "q_heads", "head_dim"), qkv_bias,
               name="q_proj", **kw)(x)
    key = Einsum("BTD,DKH->BTKH", (d, k, h), ("embed", "kv_heads", "head_dim"), qkv_bias,
                 name="k_proj", **kw)(x)
    value = Einsum("BTD,DKH->BTKH", (d, k, h), ("embed", "kv_heads", "head_dim"), qkv_bias,
                   name="v_proj", **kw)(x)
    norm = dict(eps=cfg.rms_norm_eps, axis_name="head_dim", param_dtype=cfg.jnp_param_dtype)
    q = apply_rope(RMSNorm(name="q_norm", **norm)(q), positions, cfg.rope_theta)
    key = apply_rope(RMSNorm(name="k_norm", **norm)(key), positions, cfg.rope_theta)
    q = self.shard(q, ("act_batch", "act_length", "act_heads", "head_dim"))
    new_cache = None
    if kv_cache is not None:
      cache_k, cache_v = kv_cache
      if layer is None:
        start = (0, cache_index, 0, 0)
        key = jax.lax.dynamic_update_slice(cache_k, key.astype(cache_k.dtype), start)
        value = jax.lax.dynamic_update_slice(cache_v, value.astype(cache_v.dtype), start)
        new_cache = (key, value)
      else:
        start = (layer, 0, cache_index, 0, 0)
        cache_k = jax.lax.dynamic_update_slice(cache_k, key[None].astype(cache_k.dtype), start)
        cache_v = jax.lax.dynamic_update_slice(cache_v, value[None].astype(cache_v.dtype), start)
        key = jax.lax.dynamic_index_in_dim(cache_k, layer, keepdims=False)
        value = jax.lax.dynamic_index_in_dim(cache_v, layer, keepdims=False)
        new_cache = (cache_k, cache_v)
    kv_axes = ("act_batch", "act_length", "act_kv_heads", "head_dim")
    out = attention.attention(q, self.shard(key, kv_axes), self.shard(value, kv_axes), mask,
                              cfg.attention, cfg.attention_block_q, cfg.attention_block_k,
                              self.shard, stacked_cache=kv_cache is not None and layer is not None)
    out = self.shard(out, ("act_batch", "act_length", "act_heads", "head_dim"))
    out = Einsum("BTNH,NHD->BTD", (n, h, d), ("q_heads", "head_dim", "embed"), o_bias,
                 name="o_proj", **kw)(out)
    return out, new_cache


class Mlp(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  config: Qwen3Config
  shard: sharding.ActivationSharding = sharding.ActivationSharding()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x [B, T, D] -> [B, T, D]."""
    cfg = self.config
    d, f = cfg.hidden_size, cfg.intermediate_size
    kw = dict(dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype)
    gate = Einsum("BTD,DF->BTF", (d, f), ("embed", "mlp"), name="gate_proj", **kw)(x)
    up = Einsum("BTD,DF->BTF", (d, f), ("embed", "mlp"), name="up_proj", **kw)(x)
    hidden = self.shard(nn.silu(gate) * up, ("act_batch", "act_length", "act_mlp"))
    return Einsum("BTF,FD->BTD", (f, d), ("mlp", "embed"), name="down_proj", **kw)(hidden)


class DecoderLayer(nn.Module):
  """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(x))."""

  config: Qwen3Config
  shard: sharding.ActivationSharding = sharding.ActivationSharding()

  @nn.compact
  def __call__(self, carry: tuple[jax.Array, KvCache | None], positions: jax.Array,
               mask: attention.AttentionMask, layer: jax.Array,
               cache_index: jax.Array | None) -> tuple[tuple[jax.Array, KvCache | None], None]:
    """(x [B, T, D], kv_cache) -> (([B, T, D], kv_cache updated at `layer`), None).

    The signature fits nn.scan: the stacked cache travels in the carry, `layer` (this
    layer's index) is the scanned input.
    """
    x, kv_cache = carry
    cfg = self.config
    norm = dict(eps=cfg.rms_norm_eps, axis_name="norm", param_dtype=cfg.jnp_param_dtype)
    attn_out, kv_cache = Attention(cfg, self.shard, name="attn")(
        RMSNorm(name="input_norm", **norm)(x), positions, mask, kv_cache, cache_index, layer)
    x = self.shard(x + attn_out, _HIDDEN)
    mlp_out = Mlp(cfg, self.shard, name="mlp")(RMSNorm(name="post_attn_norm", **norm)(x))
    return (self.shard(x + mlp_out, _HIDDEN), kv_cache), None


_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def layer_stack(config: Qwen3Config) -> type[nn.Module]:
  """DecoderLayer over the stacked [L, ...] params; scanned, or unrolled when not scan_layers.

  Called as stack((x, kv_cache), positions, mask, jnp.arange(L), cache_index).
  """
  layer = DecoderLayer
  if config.remat != "none":
    # Inside a rolled scan XLA cannot CSE the recomputation away; unrolled it could.
    layer = nn.remat(layer, policy=_REMAT_POLICIES[config.remat],
                     prevent_cse=not config.scan_layers)
  return nn.scan(
      layer,
      variable_axes={"params": 0},
      split_rngs={"params": True},
      in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast),
      length=config.num_hidden_layers,
      unroll=1 if config.scan_layers else config.num_hidden_layers,
      metadata_params={nn.PARTITION_NAME: "layers"},
  )
