"""Jitted generation: one prefill of left-padded prompts, then a `lax.while_loop` decode.

The KV cache has a fixed size (prompt bucket + max_new_tokens), so one compiled program serves
every batch whose prompts fit the same bucket. Returns the sampled tokens, their
log-probabilities under the sampling distribution before top-k/top-p filtering (the "old
policy" log-probs that GRPO needs) and per-row lengths. `sample` is the same program
un-jitted, with inactive rows and activation shardings, for the jitted episode loop.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from atommem_jax.model import qwen3
from atommem_jax.model import sharding
from atommem_jax.model.config import Qwen3Config

_ROWS = ("act_batch", "act_length")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How to pick each token. `greedy=True` ignores temperature / top-k / top-p."""

  max_new_tokens: int = 256
  greedy: bool = False
  temperature: float = 1.0
  top_k: int = 0  # 0 = off
  top_p: float = 1.0  # 1.0 = off
  eos_ids: tuple[int, ...] = ()
  pad_id: int = 0

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={self.max_new_tokens}; must be >= 1")
    if not self.greedy and self.temperature <= 0:
      raise ValueError(f"temperature={self.temperature}; must be > 0 (or set greedy=True)")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p={self.top_p}; must be in (0, 1]")
    if self.top_k < 0:
      raise ValueError(f"top_k={self.top_k}; must be >= 0")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Samples:
  tokens: jax.Array  # [B, M] int32, pad_id after a row ends
  logprobs: jax.Array  # [B, M] float32, 0 after a row ends
  lengths: jax.Array  # [B] int32, generated tokens including the EOS token


def bucket_length(length: int, buckets: Sequence[int]) -> int:
  """Smallest bucket that holds `length` (buckets sorted ascending); so prompts compile rarely."""
  for bucket in sorted(buckets):
    if length <= bucket:
      return bucket
  raise ValueError(f"prompt of {length} tokens exceeds the largest bucket {max(buckets)}; "
                   "add a larger bucket to the rollout config")


def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads token lists to [B, length]; returns (tokens, mask) with mask 1 on real tokens."""
  tokens = np.full((len(prompts), length), pad_id, np.int32)
  mask = np.zeros((len(prompts), length), np.int32)
  for row, prompt in enumerate(prompts):
    if len(prompt) > length:
      raise ValueError(f"prompt {row} has {len(prompt)} tokens, more than the padded length {length}")
    if len(prompt):
      tokens[row, length - len(prompt):] = prompt
      mask[row, length - len(prompt):] = 1
  return tokens, mask


def _filtered_logits(logits: jax.Array, sampling: SamplingConfig) -> jax.Array:
  """Applies top-k then top-p (nucleus) to temperature-scaled logits [B, V]."""
  if sampling.top_k:
    kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if sampling.top_p < 1.0:
    probs = jax.nn.softmax(logits, axis=-1)
    logits = jnp.where(probs < _nucleus_floor(probs, sampling.top_p), -jnp.inf, logits)
  return logits


def _nucleus_floor(probs: jax.Array, top_p: float) -> jax.Array:
  """The smallest probability [B, 1] the nucleus keeps, for probs [B, V].

  A token stays while the mass of the tokens more likely than it is below top_p (so the top
  token always stays; tokens tied with the last one kept stay too). That mass,
  M(t) = sum of the probs above t, only falls as t grows, so the floor is the smallest float
  t with M(t) < top_p: a bisection over the bit patterns of non-negative float32s (ordered as
  their values), 31 masked sums over V instead of a sort of V (XLA:CPU sorts Qwen3's 151,936
  logits in ~140 ms a row; the bisection takes a few ms).
  """
  def mass_above(bits):
    threshold = jax.lax.bitcast_convert_type(bits, jnp.float32)
    return jnp.sum(jnp.where(probs > threshold, probs, 0.0), axis=-1, keepdims=True)

  def halve(_, bounds):
    low, high = bounds  # M(high) < top_p; every t below low has M(t) >= top_p
    middle = low + (high - low) // 2
    below = mass_above(middle) < top_p
    return jnp.where(below, low, middle + 1), jnp.where(below, middle, high)

  high = jax.lax.bitcast_convert_type(jnp.max(probs, axis=-1, keepdims=True), jnp.int32)
  low = jnp.zeros_like(high)
  _, high = jax.lax.fori_loop(0, 31, halve, (low, high))
  return jax.lax.bitcast_convert_type(high, jnp.float32)


def _greedy(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """argmax (the first of equal maxima) of fp32 logits [B, V] and its log-probability.

  Two plain reductions over V instead of argmax's (value, index) reduction and a whole
  log_softmax: XLA:CPU takes 3-4x less time (bench/bench_model.py's decode profile). A row
  with a NaN logit picks token V - 1.
  """
  row_max = jnp.max(logits, axis=-1, keepdims=True)
  vocab = logits.shape[-1]
  token = jnp.min(jnp.where(logits == row_max, jnp.arange(vocab, dtype=jnp.int32), vocab - 1),
                  axis=-1)
  log_normalizer = jnp.log(jnp.sum(jnp.exp(logits - row_max), axis=-1)) + row_max[:, 0]
  return token, jnp.take_along_axis(logits, token[:, None], axis=-1)[:, 0] - log_normalizer


def _pick(logits: jax.Array, rng: jax.Array, sampling: SamplingConfig) -> tuple[jax.Array, jax.Array]:
  """Next token [B] and its log-probability [B] from fp32 logits [B, V]."""
  if sampling.greedy:
    return _greedy(logits)
  scaled = logits / sampling.temperature
  token = jax.random.categorical(rng, _filtered_logits(scaled, sampling), axis=-1)
  logprob = jax.nn.log_softmax(scaled, axis=-1)
  return token.astype(jnp.int32), jnp.take_along_axis(logprob, token[:, None], axis=-1)[:, 0]


def sample(config: Qwen3Config, params, prompt_tokens: jax.Array, prompt_mask: jax.Array,
           rng: jax.Array, sampling: SamplingConfig, *, active: jax.Array | None = None,
           mesh: Mesh | None = None, rules: sharding.Rules | None = None) -> Samples:
  """The un-jitted sampler, for use inside other jitted programs (the episode loop).

  Args:
    prompt_tokens, prompt_mask: left-padded prompts [B, P] and their mask (1 = real token).
    active: [B] bool; inactive rows generate nothing (pad tokens, 0 log-probs, length 0)
      and never keep the decode loop running. None means every row is active.
    mesh, rules: constrain activations and the KV cache to their logical shardings.
  """
  batch, prompt_len = prompt_tokens.shape
  max_new = sampling.max_new_tokens
  rules = rules or sharding.DEFAULT_RULES
  shard = sharding.ActivationSharding(mesh, rules)
  active = jnp.ones((batch,), bool) if active is None else active.astype(bool)
  cache = qwen3.init_cache(config, batch, prompt_len + max_new)
  cache_axes = qwen3.cache_logical_axes()
  cache = {name: shard(value, cache_axes[name]) for name, value in cache.items()}
  positions = qwen3.positions_from_mask(prompt_mask)
  forward = functools.partial(qwen3.forward, config, params, mesh=mesh, rules=rules)
  # The prefill stops at the hidden states: the lm head runs on the last position only,
  # never on [B, P, V].
  hidden, cache = forward(prompt_tokens, positions, attention_mask=prompt_mask, cache=cache,
                          hidden_only=True)
  logits = qwen3.lm_head(config, params, hidden[:, -1:])
  eos_ids = jnp.asarray(sampling.eos_ids or (-1,), jnp.int32)
  # XLA:CPU copies each scanned layer's slice of the stacked weights and cache at every
  # decode step; on CPU the loop reads per-layer copies made here, once.
  decode_params = params
  if _platform(mesh) == "cpu":
    decode_params, cache = qwen3.unstack_layers(params), qwen3.unstack_cache(cache)
  decode = functools.partial(qwen3.forward, config, decode_params, mesh=mesh, rules=rules)

  def cond(state):
    step, done = state[0], state[3]
    return (step < max_new) & ~jnp.all(done)

  def body(state):
    step, cache, last_logits, done, next_pos, tokens, logprobs, rng = state
    rng, step_rng = jax.random.split(rng)
    token, logprob = _pick(last_logits, step_rng, sampling)
    token = jnp.where(done, sampling.pad_id, token)
    logprob = jnp.where(done, 0.0, logprob)
    tokens = tokens.at[:, step].set(token)
    logprobs = logprobs.at[:, step].set(logprob)
    done = done | jnp.isin(token, eos_ids)
    logits, cache = decode(token[:, None], next_pos[:, None],
                           attention_mask=jnp.ones((batch, 1), jnp.int32), cache=cache)
    return (step + 1, cache, logits[:, -1], done, next_pos + 1, tokens, logprobs, rng)

  state = (jnp.int32(0), cache, logits[:, -1], ~active, positions[:, -1] + 1,
           shard(jnp.full((batch, max_new), sampling.pad_id, jnp.int32), _ROWS),
           shard(jnp.zeros((batch, max_new), jnp.float32), _ROWS), rng)
  _, _, _, _, _, tokens, logprobs, _ = jax.lax.while_loop(cond, body, state)
  is_eos = jnp.isin(tokens, eos_ids)
  first_eos = jnp.where(jnp.any(is_eos, axis=-1), jnp.argmax(is_eos, axis=-1) + 1, max_new)
  lengths = jnp.where(active, first_eos, 0).astype(jnp.int32)
  return Samples(tokens=tokens, logprobs=logprobs, lengths=lengths)


def _platform(mesh: Mesh | None) -> str:
  """The platform the program is built for: the mesh's devices' (an ahead-of-time topology
  included), else the default backend's."""
  return mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()


@functools.partial(jax.jit, static_argnames=("config", "sampling"))
def generate(config: Qwen3Config, params, prompt_tokens: jax.Array, prompt_mask: jax.Array,
             rng: jax.Array, sampling: SamplingConfig) -> Samples:
  """Samples up to `sampling.max_new_tokens` tokens for left-padded prompts [B, P]."""
  return sample(config, params, prompt_tokens, prompt_mask, rng, sampling)
