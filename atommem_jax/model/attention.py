"""Attention implementations over one mask description; only the dense reference builds [T, S].

`AttentionMask` says which keys each query sees: causal by slot (key slot <= query slot),
key validity (left padding, unfilled cache slots) and packed segments. Each implementation
builds only the mask blocks it needs from it:
- dense: the reference; scores [B, N, T, S] in fp32.
- blockwise: portable online softmax over (query block, key block) tiles with a flash-style
  custom VJP, so neither the forward nor the backward pass holds more than one tile of
  scores; key blocks wholly after a query block are skipped.
- cudnn: `jax.nn.dot_product_attention(implementation="cudnn")` (GPU), causal plus per-row
  lengths; left padding is rolled to the end of the row first.
- splash: the Pallas TPU splash-attention kernel with segment ids.
`attention` dispatches on the config's choice; "auto" picks per lowering platform with
`lax.platform_dependent`, so ahead-of-time compilation for TPU from a CPU host picks splash.
A single query (T == 1, decode over the cache) never needs a fused kernel or tiles: its
scores are [B, N, 1, S]. "auto" runs `decode_attention` there on CPU (one fused pass over the
cache, no padding to a tile, no transposed copy of k and v); elsewhere the fallback for one
query is dense.

Letters: B batch, T query length, S key length, N query heads, K kv heads, G = N // K,
H head dim.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

from atommem_jax.model import sharding
from atommem_jax.model.config import ATTENTION_IMPLEMENTATIONS

_MASKED_LOGIT = float(jnp.finfo(jnp.float32).min)  # finite: fully masked rows stay NaN-free
_SPLASH_LANES = 128  # splash block sizes are multiples of this
# "auto" on CPU caps the blockwise tiles here: XLA:CPU keeps a 64 x 64 tile in cache and
# skips more of the causal triangle; 1.5-3x faster than 512 x 512 tiles, forward and
# gradient, at 512-4096 tokens (BENCHMARKS.md); 32 is slower again.
_CPU_TILE = 64


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AttentionMask:
  """Query t of row b sees key s iff key_slot(s) <= query_slots[t], key_valid[b, s] and,
  when packed, query_segments[b, t] == key_segments[b, s]. Key slots are 0..S-1.

  self_attention (static): queries are the keys (no cache; query_slots == arange(T), T == S),
  which the fused kernels need.
  """

  query_slots: jax.Array  # [T] int32: the slot each query was written to (cache index + t)
  key_valid: jax.Array  # [B, S] bool: the slot holds a real key
  query_segments: jax.Array | None = None  # [B, T] int32, packed rows; 0 = padding
  key_segments: jax.Array | None = None  # [B, S] int32
  self_attention: bool = dataclasses.field(default=False, metadata=dict(static=True))

  @classmethod
  def causal(cls, valid: jax.Array, segment_ids: jax.Array | None = None) -> "AttentionMask":
    """Self-attention over one [B, T] batch: valid [B, T] bool, segment ids [B, T] or None."""
    return cls(jnp.arange(valid.shape[1], dtype=jnp.int32), valid, segment_ids, segment_ids,
               self_attention=True)

  def block(self, q_start, q_len: int, k_start, k_len: int) -> jax.Array:
    """[B, q_len, k_len] bool for queries q_start.. and keys k_start.. (starts may be traced)."""
    query_slots = jax.lax.dynamic_slice_in_dim(self.query_slots, q_start, q_len)
    key_slots = k_start + jnp.arange(k_len, dtype=jnp.int32)
    key_valid = jax.lax.dynamic_slice_in_dim(self.key_valid, k_start, k_len, axis=1)
    visible = (key_slots[None, :] <= query_slots[:, None])[None] & key_valid[:, None, :]
    if self.query_segments is not None:
      query_segments = jax.lax.dynamic_slice_in_dim(self.query_segments, q_start, q_len, axis=1)
      key_segments = jax.lax.dynamic_slice_in_dim(self.key_segments, k_start, k_len, axis=1)
      visible &= query_segments[:, :, None] == key_segments[:, None, :]
    return visible

  def dense(self) -> jax.Array:
    """The whole [B, T, S] bool mask (dense attention and tests only)."""
    return self.block(0, self.query_slots.shape[0], 0, self.key_valid.shape[1])

  def padded(self, num_queries: int, num_keys: int) -> "AttentionMask":
    """Extended to more queries (slot -1: they see nothing) and keys (invalid)."""
    extra_q = num_queries - self.query_slots.shape[0]
    extra_k = num_keys - self.key_valid.shape[1]
    pad_rows = lambda x, n: None if x is None else jnp.pad(x, ((0, 0), (0, n)))
    return AttentionMask(jnp.pad(self.query_slots, (0, extra_q), constant_values=-1),
                         pad_rows(self.key_valid, extra_k),
                         pad_rows(self.query_segments, extra_q),
                         pad_rows(self.key_segments, extra_k))


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          mask: jax.Array) -> jax.Array:
  """q [B, T, N, H], k/v [B, S, K, H], mask [B, T, S] bool -> [B, T, N, H]; softmax in fp32."""
  batch, length, num_heads, head_dim = q.shape
  num_kv_heads = k.shape[2]
  q = q.reshape(batch, length, num_kv_heads, num_heads // num_kv_heads, head_dim)
  scores = jnp.einsum("BTKGH,BSKH->BKGTS", q, k.astype(q.dtype),
                      preferred_element_type=jnp.float32) * head_dim**-0.5
  scores = jnp.where(mask[:, None, None], scores, _MASKED_LOGIT)
  probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
  out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v.astype(q.dtype))
  return out.reshape(batch, length, num_heads, head_dim)


def dense_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                    mask: AttentionMask) -> jax.Array:
  """The reference: `dot_product_attention` with the full [B, T, S] mask."""
  return dot_product_attention(q, k, v, mask.dense())


def decode_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                     mask: AttentionMask) -> jax.Array:
  """One query per row over a cache: q [B, 1, N, H], k/v [B, S, K, H] -> [B, 1, N, H].

  Dense's result (fp32 softmax, the same finite masked logit). Written as multiply-and-
  reduce so that XLA:CPU reads k and v once each in their cache layout: a dot over
  [B, S, K, H] would first copy them transposed to [B, K, S, H], and the blockwise path
  pads the cache to whole tiles (the decode profile in BENCHMARKS.md). Fed a slice of a
  stacked cache, XLA:CPU copies the slice (or the whole stack); the CPU sampler gives each
  layer its own cache (qwen3.unstack_cache).
  """
  batch, length, num_heads, head_dim = q.shape
  if length != 1:
    raise ValueError(f"decode_attention: one query per row, got q of shape {q.shape}; "
                     "use blockwise_attention for longer queries")
  num_kv_heads = k.shape[2]
  q = q.reshape(batch, 1, num_kv_heads, num_heads // num_kv_heads, head_dim)
  visible = mask.block(0, 1, 0, k.shape[1])[:, 0, :, None, None]  # [B, S, 1, 1]
  product = q.astype(jnp.float32) * k.astype(jnp.float32)[:, :, :, None, :]
  scores = jnp.sum(product, axis=-1) * head_dim**-0.5
  scores = jnp.where(visible, scores, _MASKED_LOGIT)  # [B, S, K, G]
  probs = jax.nn.softmax(scores, axis=1)
  out = jnp.sum(probs[..., None] * v.astype(jnp.float32)[:, :, :, None, :], axis=1)
  return out.reshape(batch, 1, num_heads, head_dim).astype(q.dtype)


# --- blockwise -------------------------------------------------------------------------------


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask,
                        block_q: int = 512, block_k: int = 512) -> jax.Array:
  """Online-softmax attention over [block_q, block_k] tiles; same result as dense.

  q [B, T, N, H], k/v [B, S, K, H] -> [B, T, N, H]. Fully masked query rows give zeros
  (dense gives their uniform average; neither is ever used). Memory: one tile of fp32
  scores per step, forward and backward (custom VJP that recomputes the tiles).
  """
  batch, length, num_heads, head_dim = q.shape
  num_keys, num_kv_heads = k.shape[1], k.shape[2]
  block_q, block_k = min(block_q, length), min(block_k, num_keys)
  padded_q = -(-length // block_q) * block_q
  padded_k = -(-num_keys // block_k) * block_k
  q = q.reshape(batch, length, num_kv_heads, num_heads // num_kv_heads, head_dim)
  q = jnp.pad(q, ((0, 0), (0, padded_q - length), (0, 0), (0, 0), (0, 0)))
  k, v = (jnp.pad(x.astype(q.dtype), ((0, 0), (0, padded_k - num_keys), (0, 0), (0, 0)))
          for x in (k, v))
  out = _flash(q, k, v, mask.padded(padded_q, padded_k), block_q, block_k)
  return out[:, :length].reshape(batch, length, num_heads, head_dim)


def _tile(q_block, k_block, mask_block, scale):
  """Masked fp32 scores [B, K, G, Tq, Sk] of q [B, Tq, K, G, H] against k [B, Sk, K, H]."""
  scores = jnp.einsum("BTKGH,BSKH->BKGTS", q_block, k_block,
                      preferred_element_type=jnp.float32) * scale
  return jnp.where(mask_block[:, None, None], scores, -jnp.inf)


def _needed(mask: AttentionMask, q_start, block_q: int, k_start):
  """False when every key of the block starting at k_start is after every query's slot."""
  query_slots = jax.lax.dynamic_slice_in_dim(mask.query_slots, q_start, block_q)
  return k_start <= jnp.max(query_slots)


def _slice(x, start, size, axis=1):
  return jax.lax.dynamic_slice_in_dim(x, start, size, axis=axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _flash(q, k, v, mask, block_q, block_k):
  return _flash_forward(q, k, v, mask, block_q, block_k)[0]


def _flash_forward(q, k, v, mask, block_q, block_k):
  """q [B, T, K, G, H] -> (out [B, T, K, G, H], logsumexp [B, K, G, T] fp32).

  The mask is tied to q, k, v by an optimization barrier first. Without it, when this runs
  inside a differentiated scan (the layer stack) whose loop-invariant mask is a constant,
  JAX's scan partial evaluation hoists every mask-only value out of the loop: the tiles'
  broadcast masks, computed for all (query block, key block) pairs at once, [nq, nk, B, K,
  G, bq, bk] -- as large as the dense scores.
  """
  q, k, v, mask = jax.lax.optimization_barrier((q, k, v, mask))
  batch, length, num_kv_heads, groups, head_dim = q.shape
  scale = head_dim**-0.5

  def query_block(i):
    q_start = i * block_q
    q_block = _slice(q, q_start, block_q)

    def key_step(carry, j):
      k_start = j * block_k

      def update(carry):
        row_max, row_sum, acc = carry
        scores = _tile(q_block, _slice(k, k_start, block_k),
                       mask.block(q_start, block_q, k_start, block_k), scale)
        new_max = jnp.maximum(row_max, jnp.max(scores, axis=-1))
        safe_max = jnp.where(jnp.isneginf(new_max), 0.0, new_max)
        probs = jnp.exp(scores - safe_max[..., None])
        correction = jnp.exp(row_max - safe_max)
        row_sum = row_sum * correction + jnp.sum(probs, axis=-1)
        acc = acc * correction[..., None] + jnp.einsum(
            "BKGTS,BSKH->BKGTH", probs.astype(v.dtype), _slice(v, k_start, block_k),
            preferred_element_type=jnp.float32)
        return new_max, row_sum, acc

      return jax.lax.cond(_needed(mask, q_start, block_q, k_start), update, lambda c: c,
                          carry), None

    stats = (batch, num_kv_heads, groups, block_q)
    init = (jnp.full(stats, -jnp.inf, jnp.float32), jnp.zeros(stats, jnp.float32),
            jnp.zeros(stats + (head_dim,), jnp.float32))
    (row_max, row_sum, acc), _ = jax.lax.scan(key_step, init,
                                              jnp.arange(k.shape[1] // block_k))
    seen = row_sum > 0
    out = acc / jnp.where(seen, row_sum, 1.0)[..., None]
    logsumexp = jnp.where(seen, row_max + jnp.log(jnp.where(seen, row_sum, 1.0)), 0.0)
    return jnp.einsum("BKGTH->BTKGH", out).astype(q.dtype), logsumexp

  out, logsumexp = jax.lax.map(query_block, jnp.arange(length // block_q))
  out = jnp.moveaxis(out, 0, 1).reshape(q.shape)  # [nq, B, bq, ...] -> [B, T, ...]
  logsumexp = jnp.moveaxis(logsumexp, 0, 3).reshape(batch, num_kv_heads, groups, length)
  return out, logsumexp


def _flash_fwd(q, k, v, mask, block_q, block_k):
  out, logsumexp = _flash_forward(q, k, v, mask, block_q, block_k)
  return out, (q, k, v, mask, out, logsumexp)


def _flash_bwd(block_q, block_k, residuals, d_out):
  """FlashAttention-2 backward: per key block, sweep the query blocks; dq accumulates."""
  q, k, v, mask, out, logsumexp = residuals
  head_dim = q.shape[-1]
  scale = head_dim**-0.5
  # delta[t] = sum_h dout * out = sum_s p * dp, the softmax Jacobian's row term.
  delta = jnp.einsum("BTKGH,BTKGH->BKGT", d_out.astype(jnp.float32), out.astype(jnp.float32))

  def key_block(d_q, j):
    k_start = j * block_k
    k_block, v_block = _slice(k, k_start, block_k), _slice(v, k_start, block_k)

    def query_step(carry, i):
      q_start = i * block_q

      def update(carry):
        d_q, d_k, d_v = carry
        q_block, d_out_block = _slice(q, q_start, block_q), _slice(d_out, q_start, block_q)
        scores = _tile(q_block, k_block, mask.block(q_start, block_q, k_start, block_k), scale)
        probs = jnp.exp(scores - _slice(logsumexp, q_start, block_q, axis=3)[..., None])
        d_v += jnp.einsum("BKGTS,BTKGH->BSKH", probs.astype(v.dtype), d_out_block.astype(v.dtype),
                          preferred_element_type=jnp.float32)
        d_probs = jnp.einsum("BTKGH,BSKH->BKGTS", d_out_block.astype(v.dtype), v_block,
                             preferred_element_type=jnp.float32)
        d_scores = (probs * (d_probs - _slice(delta, q_start, block_q, axis=3)[..., None])
                    ).astype(q.dtype)
        d_q_block = jnp.einsum("BKGTS,BSKH->BTKGH", d_scores, k_block,
                               preferred_element_type=jnp.float32) * scale
        d_q = jax.lax.dynamic_update_slice_in_dim(
            d_q, _slice(d_q, q_start, block_q) + d_q_block, q_start, axis=1)
        d_k += jnp.einsum("BKGTS,BTKGH->BSKH", d_scores, q_block,
                          preferred_element_type=jnp.float32) * scale
        return d_q, d_k, d_v

      return jax.lax.cond(_needed(mask, q_start, block_q, k_start), update, lambda c: c,
                          carry), None

    zeros = jnp.zeros(k_block.shape, jnp.float32)
    (d_q, d_k, d_v), _ = jax.lax.scan(query_step, (d_q, zeros, zeros),
                                      jnp.arange(q.shape[1] // block_q))
    return d_q, (d_k, d_v)

  d_q, (d_k, d_v) = jax.lax.scan(key_block, jnp.zeros(q.shape, jnp.float32),
                                 jnp.arange(k.shape[1] // block_k))
  unblock = lambda x: jnp.moveaxis(x, 0, 1).reshape(k.shape).astype(k.dtype)
  mask_cotangent = jax.tree.map(lambda x: np.zeros(x.shape, jax.dtypes.float0), mask)
  return d_q.astype(q.dtype), unblock(d_k), unblock(d_v), mask_cotangent


_flash.defvjp(_flash_fwd, _flash_bwd)


# --- fused kernels ---------------------------------------------------------------------------


def cudnn_supported(q: jax.Array, mask: AttentionMask) -> bool:
  """Whether the cuDNN path can express this call: bf16/fp16, head dim <= 128 and a multiple
  of 8, self-attention (no cache) without packed segments."""
  head_dim = q.shape[-1]
  return (q.dtype in (jnp.bfloat16, jnp.float16) and head_dim <= 128 and head_dim % 8 == 0
          and mask.self_attention and mask.query_segments is None)


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask,
                    implementation: str = "cudnn", block_q: int = 512,
                    block_k: int = 512) -> jax.Array:
  """`jax.nn.dot_product_attention` (causal, per-row lengths) for self-attention.

  cuDNN masks padding by length at the end of a row, so each row is rolled to start at its
  first valid token and rolled back after. Rows whose valid tokens are not contiguous
  cannot be expressed that way: if any, the call takes the blockwise path (lax.cond).
  `implementation="xla"` runs the same argument mapping without a GPU (tests).
  """
  length = q.shape[1]
  valid = mask.key_valid
  count = jnp.sum(valid, axis=1, dtype=jnp.int32)
  first = jnp.argmax(valid, axis=1).astype(jnp.int32)
  slots = jnp.arange(length, dtype=jnp.int32)[None]
  contiguous = jnp.all(valid == ((slots >= first[:, None]) & (slots < (first + count)[:, None])))
  rolled = (slots + first[:, None]) % length  # row position r holds slot rolled[r]
  unrolled = (slots - first[:, None]) % length

  def fused(q, k, v):
    take = lambda x, order: jnp.take_along_axis(x, order[:, :, None, None], axis=1)
    lengths = jnp.maximum(count, 1)  # an all-padding row still sees one key: finite output
    out = jax.nn.dot_product_attention(
        take(q, rolled), take(k.astype(q.dtype), rolled), take(v.astype(q.dtype), rolled),
        is_causal=True, query_seq_lengths=lengths, key_value_seq_lengths=lengths,
        implementation=implementation)
    return take(out, unrolled)

  fallback = lambda q, k, v: blockwise_attention(q, k, v, mask, block_q, block_k)
  return jax.lax.cond(contiguous, fused, fallback, q, k, v)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask,
                     block_q: int = 512, block_k: int = 512,
                     shard: sharding.ActivationSharding = sharding.ActivationSharding(),
                     interpret: bool = False) -> jax.Array:
  """The Pallas TPU splash kernel: static causal mask, padding and packing as segment ids.

  Self-attention only. Padding tokens form segment 0 (they see each other, never a real
  token), so no query row is empty. T is padded to a multiple of the blocks (multiples of
  128). With a mesh the kernel runs under shard_map over batch and heads.
  """
  if not mask.self_attention:
    raise ValueError("splash_attention: needs self-attention (no KV cache); "
                     "use blockwise_attention for cached calls")
  batch, length, num_heads, head_dim = q.shape
  num_kv_heads = k.shape[2]
  lane_length = -(-length // _SPLASH_LANES) * _SPLASH_LANES
  block_q, block_k = (min(max(b // _SPLASH_LANES, 1) * _SPLASH_LANES, lane_length)
                      for b in (block_q, block_k))
  multiple = int(np.lcm(block_q, block_k))
  padded = -(-length // multiple) * multiple
  segments = mask.key_valid.astype(jnp.int32)
  if mask.key_segments is not None:
    segments = jnp.where(mask.key_valid, mask.key_segments, 0)
  pad_length = lambda x: jnp.pad(x, [(0, 0), (0, padded - length)] + [(0, 0)] * (x.ndim - 2))
  q = pad_length(q * jnp.asarray(head_dim**-0.5, q.dtype))
  k, v = (pad_length(x.astype(q.dtype)) for x in (k, v))
  segments = pad_length(segments)
  blocks = splash.BlockSizes(block_q=block_q, block_kv=block_k, block_kv_compute=block_k,
                             block_q_dkv=block_q, block_kv_dkv=block_k,
                             block_kv_dkv_compute=block_k, block_q_dq=block_q,
                             block_kv_dq=block_k)

  def kernel(q, k, v, segments):  # q [B, N, T, H], k/v [B, K, T, H] (per shard)
    heads = splash_mask.MultiHeadMask([splash_mask.CausalMask((padded, padded))] * q.shape[1])
    run = splash.make_splash_mha(heads, block_sizes=blocks, head_shards=1, q_seq_shards=1,
                                 interpret=interpret)
    return jax.vmap(run)(q, k, v, segment_ids=splash.SegmentIds(segments, segments))

  q, k, v = (jnp.einsum("BTNH->BNTH", x) for x in (q, k, v))
  if shard.mesh is not None:
    spec = lambda name, size: sharding.logical_to_spec((name,), shard.mesh, shard.rules, (size,))[0]
    rows = spec("act_batch", batch)
    heads = spec("act_heads", num_heads)
    if heads != spec("act_kv_heads", num_kv_heads):
      heads = None  # the groups must stay whole on each shard
    P = jax.sharding.PartitionSpec
    kernel = jax.shard_map(kernel, mesh=shard.mesh,
                           in_specs=(P(rows, heads), P(rows, heads), P(rows, heads), P(rows)),
                           out_specs=P(rows, heads), check_vma=False)
  out = kernel(q, k, v, segments)
  return jnp.einsum("BNTH->BTNH", out)[:, :length]


@functools.cache
def _gpu_available() -> bool:
  try:
    return bool(jax.devices("gpu"))
  except RuntimeError:
    return False


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask,
              implementation: str = "auto", block_q: int = 512, block_k: int = 512,
              shard: sharding.ActivationSharding = sharding.ActivationSharding(),
              stacked_cache: bool = False) -> jax.Array:
  """q [B, T, N, H], k/v [B, S, K, H] -> [B, T, N, H] by the chosen implementation.

  "dense" and "blockwise" are used as named. A fused kernel ("cudnn", "splash") runs where
  it can express the call; elsewhere, and for a single query (decode), the fallback is
  blockwise for T > 1 and dense for T == 1. "auto": blockwise on CPU with tiles of at most
  _CPU_TILE (the config's tiles size the accelerator kernels), `decode_attention` for a
  single query there unless k/v are a layer's slice of a stacked cache (stacked_cache: XLA
  would then copy the whole stack at every step); splash on TPU, cuDNN on GPU.
  """
  if implementation not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f"attention implementation {implementation!r}; expected one of "
                     f"{ATTENTION_IMPLEMENTATIONS}")
  blockwise = functools.partial(blockwise_attention, block_q=block_q, block_k=block_k)
  if implementation == "dense":
    return dense_attention(q, k, v, mask)
  if implementation == "blockwise":
    return blockwise(q, k, v, mask)
  decode = q.shape[1] == 1
  fallback = dense_attention if decode else blockwise
  splash_or_fallback = fallback
  if mask.self_attention and not decode:
    splash_or_fallback = functools.partial(splash_attention, block_q=block_q, block_k=block_k,
                                           shard=shard)
  cudnn_or_fallback = fallback
  if cudnn_supported(q, mask) and not decode:
    cudnn_or_fallback = functools.partial(cudnn_attention, block_q=block_q, block_k=block_k)
  if implementation == "splash":
    return splash_or_fallback(q, k, v, mask)
  if implementation == "cudnn":
    if not _gpu_available():
      raise ValueError("attention='cudnn' needs a CUDA GPU (jax.devices('gpu') is empty); "
                       "set the model config's attention to 'auto' or 'blockwise'")
    return cudnn_or_fallback(q, k, v, mask)
  cpu_blockwise = functools.partial(blockwise_attention, block_q=min(block_q, _CPU_TILE),
                                    block_k=min(block_k, _CPU_TILE))
  cpu_decode = cpu_blockwise if stacked_cache else decode_attention
  per_platform = dict(cpu=cpu_decode if decode else cpu_blockwise, tpu=splash_or_fallback)
  if _gpu_available():  # the cuDNN call cannot even be traced without a GPU backend
    per_platform["cuda"] = cudnn_or_fallback
  return jax.lax.platform_dependent(q, k, v, mask, default=fallback, **per_platform)
