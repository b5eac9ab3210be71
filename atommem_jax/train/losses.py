"""Pure loss functions: completion-only SFT cross-entropy and the GRPO objective.

All per-token quantities are [B, T] and aligned with the `TrainBatch` contract: entry t belongs
to the target token tokens[:, t], predicted by the logits at t-1 (entry 0 is always 0). The
losses take per-token log-probs (and entropies), not logits: `model.logprobs.token_logprobs`
computes them without holding a whole row's [T, V] logits.

GRPO follows verl (the AtomMem reference trainer): PPO-clip with separate low/high epsilon
(DAPO clip-higher) and verl's dual clip for negative advantages, a KL term to the reference
policy (k3 = verl `low_var_kl`, with its clamps), an optional entropy bonus, and the loss
aggregated per `aggregation`. Sums are divided by counts (`num_tokens`, `num_sequences`) that
the caller may pass for the whole batch, so that gradient accumulation over micro-batches adds
up to exactly the full-batch loss.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from atommem_jax import config_lib
from atommem_jax.train.batch import TrainBatch

# The GRPO settings: the grpo section's schema, declared where the config builds it.
GRPOConfig = config_lib.GRPOConfig
Metrics = dict[str, jax.Array]


def _shift_right(x: jax.Array) -> jax.Array:
  """[B, T-1] values for targets 1..T-1 -> [B, T] with 0 at t=0."""
  return jnp.pad(x, ((0, 0), (1, 0)))


def target_mask(batch: TrainBatch) -> jax.Array:
  """float32 [B, T]: loss_mask where tokens[t] has a predecessor in its own sequence."""
  segments = batch.segment_ids
  same_sequence = (segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] != 0)
  return _shift_right(batch.loss_mask[:, 1:].astype(jnp.float32) * same_sequence)


def _segment_sums(values: jax.Array, segment_ids: jax.Array) -> jax.Array:
  """Per-row sums by segment id: [B, T] values -> [B, T + 1] (index = segment id)."""
  length = values.shape[1]
  return jax.vmap(lambda v, s: jax.ops.segment_sum(v, s, num_segments=length + 1))(
      values, segment_ids)


def count_targets(batch: TrainBatch) -> tuple[jax.Array, jax.Array]:
  """(num_tokens, num_sequences): trained target tokens, and sequences with at least one."""
  mask = target_mask(batch)
  per_sequence = _segment_sums(mask, batch.segment_ids)
  return jnp.sum(mask), jnp.sum(per_sequence > 0).astype(jnp.float32)


def aggregate(values: jax.Array, batch: TrainBatch, aggregation: str, *,
              num_tokens: jax.Array | None = None,
              num_sequences: jax.Array | None = None) -> jax.Array:
  """Reduces per-token values [B, T] to a scalar over the trained target tokens.

  token-mean: sum over tokens / num_tokens. seq-mean-token-mean: mean over sequences (packed
  segments) of each sequence's token mean. Counts default to this batch's.
  """
  mask = target_mask(batch)
  values = jnp.where(mask > 0, values, 0.0)  # padding rows may hold anything
  if aggregation == "token-mean":
    total = jnp.sum(values)
    count = jnp.sum(mask) if num_tokens is None else num_tokens
  elif aggregation == "seq-mean-token-mean":
    sums = _segment_sums(values, batch.segment_ids)
    counts = _segment_sums(mask, batch.segment_ids)
    total = jnp.sum(sums / jnp.maximum(counts, 1.0))
    count = jnp.sum(counts > 0).astype(jnp.float32) if num_sequences is None else num_sequences
  else:
    raise ValueError(f"aggregation={aggregation!r}; expected one of {config_lib.AGGREGATIONS}")
  return total / jnp.maximum(count, 1.0)


def sft_loss(logprobs: jax.Array, batch: TrainBatch, *, num_tokens: jax.Array | None = None,
             prompt_loss_weight: float = 0.0) -> tuple[jax.Array, Metrics]:
  """Completion-only cross-entropy: mean negative log-likelihood over the response tokens.

  logprobs [B, T]: log p(tokens[:, t]) of the policy, 0 at t=0 (`model.logprobs`).

  `prompt_loss_weight` w > 0 adds the prompt tokens' NLL with per-token weight w (as the
  fine-tuning option of that name): loss = (sum_response nll + w * sum_prompt nll) /
  num_tokens. It is meant for models trained from random init, which have never read text
  (on the tiny default, 0.1 was not measurably better; BENCHMARKS.md).

  Returns (loss, {"loss", "num_tokens"} plus, when w > 0, "response_loss" (the loss without
  the prompt term), "prompt_nll_sum" and "prompt_tokens", which add up over micro-batches).
  `num_tokens` (default: this batch's count of response tokens) is the divisor, so passing
  the full batch's count makes micro-batch losses add up. "loss" is the optimised value.
  """
  mask = target_mask(batch)
  nll = -logprobs
  count = jnp.sum(mask)
  divisor = jnp.maximum(count if num_tokens is None else num_tokens, 1.0)
  loss = jnp.sum(jnp.where(mask > 0, nll, 0.0)) / divisor
  metrics = {"num_tokens": count}
  if prompt_loss_weight:
    prompt = target_mask(dataclasses.replace(batch, loss_mask=jnp.ones_like(mask))) * (1 - mask)
    prompt_sum = jnp.sum(jnp.where(prompt > 0, nll, 0.0))
    metrics.update(response_loss=loss, prompt_nll_sum=prompt_sum, prompt_tokens=jnp.sum(prompt))
    loss = loss + prompt_loss_weight * prompt_sum / divisor
  return loss, {"loss": loss, **metrics}


def group_advantages(rewards: jax.Array, *, normalize_std: bool = False,
                     eps: float = 1e-6) -> jax.Array:
  """GRPO advantages [P, G] from rewards [P, G] (P prompts, G rollouts each).

  reward - group mean; with `normalize_std`, divided by (unbiased group std + eps), as verl.
  A group of one has no baseline: its advantage is its reward (verl's convention).
  """
  rewards = jnp.asarray(rewards, jnp.float32)
  if rewards.shape[1] == 1:
    return rewards / (1.0 + eps) if normalize_std else rewards
  centred = rewards - jnp.mean(rewards, axis=1, keepdims=True)
  if not normalize_std:
    return centred
  return centred / (jnp.std(rewards, axis=1, keepdims=True, ddof=1) + eps)


def differing_groups(rewards) -> np.ndarray:
  """[P] bool: which groups (rows of rewards [P, G]) hold rewards that are not all equal: the
  groups with a nonzero advantage, the only ones GRPO learns from (DAPO filters the others
  out)."""
  rewards = np.asarray(rewards)
  return rewards.max(axis=1) > rewards.min(axis=1)


def mixed_group_share(rewards) -> float:
  """Share of the groups whose rewards differ (`differing_groups`); 0 for no groups."""
  differ = differing_groups(rewards)
  return float(np.mean(differ)) if differ.size else 0.0


def kl_penalty(logprobs: jax.Array, ref_logprobs: jax.Array, estimator: str) -> jax.Array:
  """Per-token KL(pi || pi_ref) estimate from log-probs of the sampled tokens.

  k1 = logp - ref. k3 = exp(ref - logp) - (ref - logp) - 1, with verl's low_var_kl clamps
  (log-ratio to [-20, 20], result to [-10, 10]).
  """
  if estimator == "k1":
    return logprobs - ref_logprobs
  if estimator == "k3":
    log_ratio = jnp.clip(ref_logprobs - logprobs, -20.0, 20.0)
    return jnp.clip(jnp.exp(log_ratio) - log_ratio - 1.0, -10.0, 10.0)
  if estimator == "none":
    return jnp.zeros_like(logprobs)
  raise ValueError(f"kl_estimator={estimator!r}; expected one of {config_lib.KL_ESTIMATORS}")


def grpo_loss(logprobs: jax.Array, entropy: jax.Array, ref_logprobs: jax.Array | None,
              batch: TrainBatch, *,
              clip_low: float = 0.2, clip_high: float = 0.28,
              clip_ratio_c: float | None = 3.0, kl_coef: float = 0.001,
              kl_estimator: str = "k3", aggregation: str = "token-mean",
              entropy_coef: float = 0.0, num_tokens: jax.Array | None = None,
              num_sequences: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
  """GRPO loss = pg_loss + kl_coef * kl - entropy_coef * entropy, and its metrics.

  logprobs, entropy [B, T]: the current policy's log-probs of the tokens and the entropies
  of its predicted distributions (`model.logprobs.token_logprobs`, at the rollout
  temperature); ref_logprobs [B, T]: the reference policy's log-probs (None when
  kl_estimator="none"). Per token, ratio = exp(logp - old_logp)
  and pg = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high)), for A < 0 capped at
  -A * clip_ratio_c (dual clip). pg, kl and entropy are reduced with `aggregation`.

  Metrics: loss, pg_loss, kl, entropy (aggregated); clip_frac (clipped term active),
  clip_frac_low (A < 0, ratio below 1 - clip_low), clip_frac_high (A > 0, ratio above
  1 + clip_high), dual_clip_frac, ratio_mean, ppo_kl (mean old_logp - logp), all token means;
  ratio_max / ratio_min; num_tokens (this batch's trained tokens).
  """
  if kl_estimator not in config_lib.KL_ESTIMATORS:
    raise ValueError(f"kl_estimator={kl_estimator!r}; expected one of "
                     f"{config_lib.KL_ESTIMATORS}")
  if kl_estimator != "none" and ref_logprobs is None:
    raise ValueError(f"kl_estimator={kl_estimator!r} needs ref_logprobs; pass the reference "
                     "policy's token log-probs or set kl_estimator='none'")
  mask = target_mask(batch)
  count = jnp.sum(mask)
  token_count = jnp.maximum(count if num_tokens is None else num_tokens, 1.0)
  reduce = lambda values: aggregate(values, batch, aggregation, num_tokens=num_tokens,
                                    num_sequences=num_sequences)
  token_mean = lambda values: jnp.sum(jnp.where(mask > 0, values, 0.0)) / token_count

  advantages = batch.advantages
  log_ratio = jnp.clip(logprobs - batch.old_logprobs, -20.0, 20.0)
  ratio = jnp.exp(log_ratio)
  unclipped = -advantages * ratio
  clipped = -advantages * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
  pg = jnp.maximum(unclipped, clipped)
  dual_clipped = jnp.zeros_like(pg, bool)
  if clip_ratio_c is not None:
    bound = -advantages * clip_ratio_c
    dual_clipped = (advantages < 0) & (pg > bound)
    pg = jnp.where(advantages < 0, jnp.minimum(pg, bound), pg)
  pg_loss = reduce(pg)

  kl = reduce(kl_penalty(logprobs, ref_logprobs if ref_logprobs is not None else logprobs,
                         kl_estimator))
  if entropy_coef == 0.0:
    entropy = jax.lax.stop_gradient(entropy)
  entropy = reduce(entropy)
  loss = pg_loss + kl_coef * kl - entropy_coef * entropy

  on = mask > 0
  metrics = {
      "loss": loss,
      "pg_loss": pg_loss,
      "kl": kl,
      "entropy": entropy,
      "clip_frac": token_mean((clipped > unclipped).astype(jnp.float32)),
      "clip_frac_low": token_mean(((advantages < 0) & (ratio < 1.0 - clip_low)).astype(
          jnp.float32)),
      "clip_frac_high": token_mean(((advantages > 0) & (ratio > 1.0 + clip_high)).astype(
          jnp.float32)),
      "dual_clip_frac": token_mean(dual_clipped.astype(jnp.float32)),
      "ratio_mean": token_mean(ratio),
      "ratio_max": jnp.max(jnp.where(on, ratio, -jnp.inf)),
      "ratio_min": jnp.min(jnp.where(on, ratio, jnp.inf)),
      "ppo_kl": token_mean(-log_ratio),
      "num_tokens": count,
  }
  return loss, jax.tree.map(jax.lax.stop_gradient, metrics)
