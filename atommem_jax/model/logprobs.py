"""Per-token log-probs and entropies of a token sequence, the lm head a chunk at a time.

The vocabulary projection is the largest activation of a long row: fp32 logits [B, T, V]
take 10 GB for one 16k-token row of Qwen3's 151,936-token vocabulary, with more copies for
the log-softmax and its gradient. Here the lm head runs inside a `lax.scan` over chunks of
`chunk` positions, each under `jax.checkpoint`, so that only one chunk's logits [B, C, V]
exist at a time, in the forward pass and (recomputed) in the backward pass. Given the
positions whose log-probs are used (`needed`), a chunk with none of them skips its lm head
(a `lax.cond`, in both passes), and with a bound on their number per row (`max_needed`) only
they are gathered and projected: the prompt of a long GRPO row costs no vocabulary projection.

Alignment (the `train.batch.TrainBatch` contract): entry t is log p(tokens[:, t]) under the
distribution predicted at position t-1; entry 0 is 0.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from atommem_jax.model import qwen3
from atommem_jax.model import sharding
from atommem_jax.model.config import Qwen3Config

Params = dict[str, Any]
_LOGITS = ("act_batch", "act_length", "act_vocab")


def _shift_right(x: jax.Array) -> jax.Array:
  """[B, T-1] values for targets 1..T-1 -> [B, T] with 0 at t=0."""
  return jnp.pad(x, ((0, 0), (1, 0)))


def token_logprobs(config: Qwen3Config, params: Params, hidden: jax.Array, tokens: jax.Array,
                   *, temperature: float = 1.0, chunk: int = 0, with_entropy: bool = False,
                   needed: jax.Array | None = None, max_needed: int = 0,
                   shard: sharding.ActivationSharding = sharding.ActivationSharding()
                   ) -> tuple[jax.Array, jax.Array | None]:
  """(log-probs [B, T], entropies [B, T] or None) of tokens [B, T] from hidden [B, T, D].

  hidden: final normed hidden states (`qwen3.forward(..., hidden_only=True)`). Logits are
  fp32 and divided by `temperature` (the sampling distribution's). chunk: positions per
  lm-head call; 0 (or >= T - 1) projects every position at once. with_entropy: also the
  entropy of each predicted distribution (else None).

  needed [B, T] (bool or 0/1): the entries the caller uses. With chunking, a chunk where no
  row needs an entry is not computed and holds 0. With max_needed K > 0 (a bound the caller
  guarantees: no row needs more than K entries, e.g. a GRPO row's response of at most
  max_new_tokens), each row's needed positions are first gathered into [B, K] and only those
  go through the lm head; every other entry is 0. Needed entries are exact either way.
  """
  targets = tokens[:, 1:]
  predictors = hidden[:, :-1]
  needed_steps = None if needed is None else needed[:, 1:].astype(bool)
  if needed_steps is not None and 0 < max_needed < targets.shape[1]:
    # Needed positions first, in order (a stable sort), then the first K of them.
    order = jnp.argsort(~needed_steps, axis=1, stable=True)[:, :max_needed]  # [B, K]
    kept = jnp.take_along_axis(needed_steps, order, axis=1)
    logprobs, entropy = _chunked_stats(
        config, params, jnp.take_along_axis(predictors, order[..., None], axis=1),
        jnp.take_along_axis(targets, order, axis=1), kept, temperature=temperature,
        chunk=chunk, with_entropy=with_entropy, shard=shard)
    rows = jnp.arange(targets.shape[0])[:, None]
    scatter = lambda x: jnp.zeros(targets.shape, x.dtype).at[rows, order].set(
        jnp.where(kept, x, 0.0))
    logprobs = scatter(logprobs)
    entropy = None if entropy is None else scatter(entropy)
  else:
    logprobs, entropy = _chunked_stats(config, params, predictors, targets, needed_steps,
                                       temperature=temperature, chunk=chunk,
                                       with_entropy=with_entropy, shard=shard)
  return _shift_right(logprobs), None if entropy is None else _shift_right(entropy)


def _chunked_stats(config: Qwen3Config, params: Params, predictors: jax.Array,
                   targets: jax.Array, needed: jax.Array | None, *, temperature: float,
                   chunk: int, with_entropy: bool, shard: sharding.ActivationSharding
                   ) -> tuple[jax.Array, jax.Array | None]:
  """Log-probs [B, S] (and entropies) of targets [B, S] predicted from predictors [B, S, D],
  `chunk` positions per lm-head call, chunks with no `needed` [B, S] entry skipped."""
  batch, steps = targets.shape

  def stats(chunk_hidden, chunk_targets):
    """[B, C, D], [B, C] -> log-probs [B, C] (and entropies [B, C])."""
    logits = shard(qwen3.lm_head(config, params, chunk_hidden), _LOGITS)
    if temperature != 1.0:
      logits = logits / temperature
    log_normalizer = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, chunk_targets[..., None], axis=-1)[..., 0]
    logprobs = picked - log_normalizer
    if not with_entropy:
      return logprobs, None
    log_probs = logits - log_normalizer[..., None]
    return logprobs, -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)

  if chunk <= 0 or chunk >= steps:
    return stats(predictors, targets)
  num_chunks = -(-steps // chunk)
  pad = num_chunks * chunk - steps

  def chunked(x):  # [B, S, ...] -> [num_chunks, B, C, ...], zero-padded at the end
    x = jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
    return x.reshape((batch, num_chunks, chunk) + x.shape[2:]).swapaxes(0, 1)

  def unchunked(x):  # [num_chunks, B, C] -> [B, S]
    return x.swapaxes(0, 1).reshape(batch, num_chunks * chunk)[:, :steps]

  if needed is None:
    needed = jnp.ones((batch, steps), bool)

  # The checkpoint wraps the cond (not the other way round): its residuals are then the
  # chunk's inputs, and the head's weights stay loop-invariant instead of being saved per
  # chunk as a residual of the cond.
  @jax.checkpoint
  def chunk_stats(chunk_hidden, chunk_targets, chunk_needed):
    def skipped(*_):
      zeros = jnp.zeros(chunk_targets.shape, jnp.float32)
      return zeros, (zeros if with_entropy else None)
    return jax.lax.cond(jnp.any(chunk_needed), stats, skipped, chunk_hidden, chunk_targets)

  _, (logprobs, entropy) = jax.lax.scan(
      lambda carry, xs: (carry, chunk_stats(*xs)), None,
      (chunked(predictors), chunked(targets), chunked(needed)))
  return unchunked(logprobs), None if entropy is None else unchunked(entropy)
