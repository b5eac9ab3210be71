"""Losses and batch builders against independent references: numpy loops over tokens and
sequences, torch cross_entropy, and jax.grad of a hand-written REINFORCE surrogate.

The losses take per-token log-probs and entropies; here they come from random logits through
a dense log-softmax (tests/test_logprobs.py checks the model's chunked ones against it)."""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from atommem_jax.train import batch as batch_lib
from atommem_jax.train import losses

VOCAB = 11
LENGTH = 12


def _examples(seed: int = 0) -> list[batch_lib.Example]:
  rng = np.random.RandomState(seed)
  sizes = [(3, 5), (2, 3), (4, 2), (1, 4), (5, 6), (2, 1)]
  examples = []
  for prompt_len, response_len in sizes:
    examples.append(batch_lib.Example(
        prompt_ids=rng.randint(0, VOCAB, prompt_len).tolist(),
        response_ids=rng.randint(0, VOCAB, response_len).tolist(),
        advantage=float(rng.normal()),
        old_logprobs=(-rng.uniform(0.5, 4.0, response_len)).tolist()))
  return examples


def _packed_batch(seed: int = 0) -> batch_lib.TrainBatch:
  """Several sequences per row, padding and one all-padding row."""
  return batch_lib.pack_examples(_examples(seed), length=LENGTH, num_rows=5)


def _logits(batch, seed=1, scale=2.0):
  rng = np.random.RandomState(seed)
  return rng.normal(0, scale, batch.shape + (VOCAB,)).astype(np.float32)


def _token_logprobs(logits, tokens):
  """Dense reference of the losses' input: log softmax(logits[:, t-1])[tokens[:, t]], 0 at t=0."""
  log_probs = jax.nn.log_softmax(jnp.asarray(logits)[:, :-1], axis=-1)
  picked = jnp.take_along_axis(log_probs, jnp.asarray(tokens)[:, 1:, None], axis=-1)[..., 0]
  return jnp.pad(picked, ((0, 0), (1, 0)))


def _token_entropy(logits):
  """Entropy of softmax(logits[:, t-1]) at t, 0 at t=0."""
  log_probs = jax.nn.log_softmax(jnp.asarray(logits)[:, :-1], axis=-1)
  return jnp.pad(-jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1), ((0, 0), (1, 0)))


def _np_log_softmax(x):
  x = x.astype(np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _sequences(batch):
  """Reference list of sequences: (row, [target positions t]) with loss_mask 1."""
  segment_ids = np.asarray(batch.segment_ids)
  loss_mask = np.asarray(batch.loss_mask)
  out = []
  for row in range(segment_ids.shape[0]):
    for segment in sorted(set(segment_ids[row]) - {0}):
      positions = [t for t in range(1, segment_ids.shape[1])
                   if segment_ids[row, t] == segment and segment_ids[row, t - 1] == segment
                   and loss_mask[row, t] == 1]
      if positions:
        out.append((row, positions))
  return out


def _np_per_token(batch, logits, old, ref, advantages, clip_low, clip_high, clip_c, kl):
  """Reference per-token pg / kl / entropy at every trained target position."""
  tokens = np.asarray(batch.tokens)
  values = {}
  for row, positions in _sequences(batch):
    for t in positions:
      log_probs = _np_log_softmax(logits[row, t - 1])
      logp = log_probs[tokens[row, t]]
      ratio = np.exp(np.clip(logp - old[row, t], -20, 20))
      a = advantages[row, t]
      pg = max(-a * ratio, -a * min(max(ratio, 1 - clip_low), 1 + clip_high))
      if clip_c is not None and a < 0:
        pg = min(pg, -a * clip_c)
      if kl == "k3":
        d = np.clip(ref[row, t] - logp, -20, 20)
        kl_value = np.clip(np.exp(d) - d - 1, -10, 10)
      elif kl == "k1":
        kl_value = logp - ref[row, t]
      else:
        kl_value = 0.0
      entropy = -(np.exp(log_probs) * log_probs).sum()
      values[(row, t)] = dict(pg=pg, kl=kl_value, entropy=entropy, ratio=ratio, logp=logp)
  return values


def _np_aggregate(batch, per_token, key, aggregation):
  if aggregation == "token-mean":
    all_values = [v[key] for v in per_token.values()]
    return sum(all_values) / len(all_values)
  means = [np.mean([per_token[(row, t)][key] for t in positions])
           for row, positions in _sequences(batch)]
  return np.mean(means)


# --- batch contract -----------------------------------------------------------------------


def test_pad_examples_layout_matches_contract():
  examples = [batch_lib.Example([5, 6, 7], [8, 9], 0.5, [-1.0, -2.0]),
              batch_lib.Example([3], [4, 2, 1], -1.0, [-0.1, -0.2, -0.3])]
  batch = batch_lib.pad_examples(examples, buckets=[4, 8], pad_id=0, row_multiple=4)
  assert batch.shape == (4, 8)
  np.testing.assert_array_equal(batch.tokens[0], [5, 6, 7, 8, 9, 0, 0, 0])
  np.testing.assert_array_equal(batch.tokens[1], [3, 4, 2, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(batch.positions[0], [0, 1, 2, 3, 4, 0, 0, 0])
  np.testing.assert_array_equal(batch.segment_ids[1], [1, 1, 1, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(batch.segment_ids[2:], 0)
  # The mask marks the TARGET tokens that are response tokens.
  np.testing.assert_array_equal(batch.loss_mask[0], [0, 0, 0, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(batch.loss_mask[1], [0, 1, 1, 1, 0, 0, 0, 0])
  np.testing.assert_allclose(batch.old_logprobs[0], [0, 0, 0, -1, -2, 0, 0, 0])
  np.testing.assert_allclose(batch.advantages[1], [0, -1, -1, -1, 0, 0, 0, 0])


def test_pack_examples_keeps_every_example_intact():
  examples = _examples()
  batch = _packed_batch()
  tokens, segments, positions = (np.asarray(x) for x in (batch.tokens, batch.segment_ids,
                                                         batch.positions))
  found = []
  for row in range(batch.shape[0]):
    for segment in sorted(set(segments[row]) - {0}):
      where = np.flatnonzero(segments[row] == segment)
      assert np.all(np.diff(where) == 1), "a segment must be contiguous"
      np.testing.assert_array_equal(positions[row, where], np.arange(len(where)))
      found.append(tokens[row, where].tolist())
  expected = [list(e.prompt_ids) + list(e.response_ids) for e in examples]
  assert sorted(found) == sorted(expected)
  assert batch.shape[0] == 5 and np.all(segments[-1] == 0)
  assert batch.shape[0] * LENGTH >= sum(map(len, expected))


def test_builders_reject_bad_examples():
  with pytest.raises(ValueError, match="empty prompt_ids"):
    batch_lib.pad_examples([batch_lib.Example([], [1, 2])], length=4)
  with pytest.raises(ValueError, match="old_logprobs"):
    batch_lib.pad_examples([batch_lib.Example([1], [1, 2], 0.0, [-1.0])], length=4)
  with pytest.raises(ValueError, match="largest length bucket"):
    batch_lib.pad_examples([batch_lib.Example([1] * 5, [2] * 5)], buckets=[4, 8])
  assert batch_lib.group_by_bucket(_examples(), [8, 16]) == {8: [0, 1, 2, 3, 5], 16: [4]}


def test_target_mask_drops_first_token_of_each_segment():
  batch = _packed_batch()
  forced = dataclasses.replace(batch, loss_mask=np.ones(batch.shape, np.float32))
  mask = np.asarray(losses.target_mask(forced))
  segments = np.asarray(batch.segment_ids)
  for row, t in itertools.product(range(batch.shape[0]), range(LENGTH)):
    expected = t > 0 and segments[row, t] != 0 and segments[row, t] == segments[row, t - 1]
    assert mask[row, t] == float(expected), (row, t)


# --- SFT ----------------------------------------------------------------------------------


def test_sft_loss_matches_torch_cross_entropy():
  batch = _packed_batch()
  logits = _logits(batch)
  loss, metrics = losses.sft_loss(_token_logprobs(logits, batch.tokens), batch)
  targets = np.asarray(batch.tokens)[:, 1:].astype(np.int64).copy()
  keep = np.zeros_like(targets, bool)
  for row, positions in _sequences(batch):
    keep[row, np.asarray(positions) - 1] = True
  targets[~keep] = -100
  expected = torch.nn.functional.cross_entropy(
      torch.from_numpy(logits[:, :-1]).reshape(-1, VOCAB), torch.from_numpy(targets).reshape(-1),
      ignore_index=-100)
  np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
  assert int(metrics["num_tokens"]) == int(keep.sum())


def test_sft_loss_with_external_token_count_adds_up_over_row_blocks():
  batch = _packed_batch()
  logits = _logits(batch)
  full, _ = losses.sft_loss(_token_logprobs(logits, batch.tokens), batch)
  num_tokens, _ = losses.count_targets(batch)
  total = 0.0
  for rows in (slice(0, 2), slice(2, 5)):
    part = jax.tree.map(lambda x, rows=rows: x[rows], batch)
    total += float(losses.sft_loss(_token_logprobs(logits[rows], part.tokens), part,
                                   num_tokens=num_tokens)[0])
  np.testing.assert_allclose(total, float(full), rtol=1e-5)


def test_sft_prompt_loss_weight_adds_weighted_prompt_nll_like_torch():
  batch = _packed_batch()
  logits = _logits(batch)
  weight = 0.25
  loss, metrics = losses.sft_loss(_token_logprobs(logits, batch.tokens), batch,
                                  prompt_loss_weight=weight)
  # Reference: per-token weights 1 (response) / w (prompt) on every token that has a
  # predecessor in its own sequence, torch cross entropy, divided by the response count.
  tokens = np.asarray(batch.tokens)
  segments = np.asarray(batch.segment_ids)
  response = np.asarray(batch.loss_mask)
  nll = torch.nn.functional.cross_entropy(
      torch.from_numpy(logits[:, :-1]).reshape(-1, VOCAB),
      torch.from_numpy(tokens[:, 1:].astype(np.int64)).reshape(-1),
      reduction="none").reshape(tokens.shape[0], -1).numpy()
  weights = np.zeros(nll.shape)
  for row, t in itertools.product(range(tokens.shape[0]), range(1, tokens.shape[1])):
    if segments[row, t] != 0 and segments[row, t] == segments[row, t - 1]:
      weights[row, t - 1] = 1.0 if response[row, t] else weight
  response_count = (weights == 1.0).sum()
  np.testing.assert_allclose(float(loss), (weights * nll).sum() / response_count, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["response_loss"]),
                             nll[weights == 1.0].sum() / response_count, rtol=1e-5)
  prompt = weights == weight
  assert int(metrics["prompt_tokens"]) == int(prompt.sum())
  np.testing.assert_allclose(float(metrics["prompt_nll_sum"]), nll[prompt].sum(), rtol=1e-5)
  unweighted, plain = losses.sft_loss(_token_logprobs(logits, batch.tokens), batch)
  assert float(loss) > float(unweighted) and "prompt_tokens" not in plain


# --- GRPO ---------------------------------------------------------------------------------


def _grpo_inputs(seed=0):
  """Batch whose old log-probs put ratios on both sides of both clip bounds."""
  batch = _packed_batch(seed)
  logits = _logits(batch, seed=seed + 1)
  logp = np.asarray(_token_logprobs(logits, batch.tokens))
  rng = np.random.RandomState(seed + 2)
  mask = np.asarray(batch.loss_mask)
  old = np.where(mask > 0, logp + rng.uniform(-1.6, 1.6, logp.shape), 0.0).astype(np.float32)
  advantages = np.where(mask > 0, rng.choice([-1.5, -0.5, 0.7, 1.2], logp.shape), 0.0)
  advantages = advantages.astype(np.float32)
  ref = np.where(mask > 0, logp + rng.normal(0, 1.0, logp.shape), 0.0).astype(np.float32)
  batch = dataclasses.replace(batch, old_logprobs=old, advantages=advantages)
  return batch, logits, ref


@pytest.mark.parametrize("kl_estimator", ["k3", "k1", "none"])
@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize("clip_ratio_c", [3.0, None])
def test_grpo_loss_matches_numpy_reference(kl_estimator, aggregation, clip_ratio_c):
  batch, logits, ref = _grpo_inputs()
  kwargs = dict(clip_low=0.2, clip_high=0.28, clip_ratio_c=clip_ratio_c, kl_coef=0.05,
                kl_estimator=kl_estimator, aggregation=aggregation, entropy_coef=0.01)
  loss, metrics = losses.grpo_loss(_token_logprobs(logits, batch.tokens),
                                   _token_entropy(logits), jnp.asarray(ref), batch, **kwargs)
  per_token = _np_per_token(batch, logits, np.asarray(batch.old_logprobs), ref,
                            np.asarray(batch.advantages), 0.2, 0.28, clip_ratio_c,
                            kl_estimator)
  ratios = np.array([v["ratio"] for v in per_token.values()])
  token_advantages = np.array([batch.advantages[key] for key in per_token])
  # The random inputs exercise every branch.
  assert np.any((ratios > 1.28) & (token_advantages > 0))
  assert np.any((ratios < 0.8) & (token_advantages < 0))
  assert np.any((ratios > 3.0) & (token_advantages < 0))  # dual clip

  pg = _np_aggregate(batch, per_token, "pg", aggregation)
  kl = _np_aggregate(batch, per_token, "kl", aggregation)
  entropy = _np_aggregate(batch, per_token, "entropy", aggregation)
  np.testing.assert_allclose(float(metrics["pg_loss"]), pg, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(metrics["kl"]), kl, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(metrics["entropy"]), entropy, rtol=1e-5)
  np.testing.assert_allclose(float(loss), pg + 0.05 * kl - 0.01 * entropy, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(float(metrics["clip_frac_high"]),
                             np.mean((ratios > 1.28) & (token_advantages > 0)), rtol=1e-6)
  np.testing.assert_allclose(float(metrics["clip_frac_low"]),
                             np.mean((ratios < 0.8) & (token_advantages < 0)), rtol=1e-6)
  np.testing.assert_allclose(float(metrics["ratio_mean"]), ratios.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["ratio_max"]), ratios.max(), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["ratio_min"]), ratios.min(), rtol=1e-5)
  assert int(metrics["num_tokens"]) == len(per_token)


def test_k3_kl_is_clamped_like_verl_low_var_kl():
  logprobs = jnp.array([-10.0, -1.0, -0.5, -30.0])
  ref = jnp.array([5.0, -1.0, -3.0, 0.0])  # ref - logp = 15, 0, -2.5, 30
  got = np.asarray(losses.kl_penalty(logprobs, ref, "k3"))
  d = np.clip(np.asarray(ref - logprobs, np.float64), -20, 20)
  np.testing.assert_allclose(got, np.clip(np.exp(d) - d - 1, -10, 10), rtol=1e-6)
  assert got[0] == 10.0 and got[1] == 0.0


def test_grpo_zero_advantage_and_equal_policies_give_zero_loss():
  batch, logits, _ = _grpo_inputs()
  logp = _token_logprobs(logits, batch.tokens)
  batch = dataclasses.replace(batch, advantages=np.zeros(batch.shape, np.float32))
  loss, metrics = losses.grpo_loss(logp, _token_entropy(logits), logp, batch,
                                   entropy_coef=0.0)
  assert float(loss) == 0.0 and float(metrics["kl"]) == 0.0


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean"])
def test_grpo_gradient_at_ratio_one_is_reinforce(aggregation):
  batch, logits, _ = _grpo_inputs(seed=3)
  tokens = jnp.asarray(batch.tokens)
  logp = _token_logprobs(logits, tokens)
  on_policy = dataclasses.replace(batch, old_logprobs=np.asarray(logp))

  def grpo(x):
    return losses.grpo_loss(_token_logprobs(x, tokens), _token_entropy(x), None, on_policy,
                            kl_estimator="none", kl_coef=0.0, aggregation=aggregation)[0]

  sequences = _sequences(batch)
  advantages = np.asarray(batch.advantages)
  num_tokens = sum(len(positions) for _, positions in sequences)

  def surrogate(x):  # -A * log p, averaged per the aggregation, written out by hand
    logp = _token_logprobs(x, tokens)
    total = 0.0
    for row, positions in sequences:
      terms = [-advantages[row, t] * logp[row, t] for t in positions]
      if aggregation == "token-mean":
        total += sum(terms) / num_tokens
      else:
        total += sum(terms) / len(positions) / len(sequences)
    return total

  np.testing.assert_allclose(np.asarray(jax.grad(grpo)(jnp.asarray(logits))),
                             np.asarray(jax.grad(surrogate)(jnp.asarray(logits))),
                             rtol=1e-5, atol=1e-7)


def test_grpo_seq_mean_counts_each_packed_sequence():
  batch, _, _ = _grpo_inputs()
  _, num_sequences = losses.count_targets(batch)
  assert int(num_sequences) == len(_sequences(batch)) == len(_examples())


# --- advantages ---------------------------------------------------------------------------


def test_group_advantages_subtract_group_mean():
  rewards = np.random.RandomState(0).uniform(0, 1, (4, 8)).astype(np.float32)
  got = np.asarray(losses.group_advantages(rewards))
  np.testing.assert_allclose(got, rewards - rewards.mean(1, keepdims=True), atol=1e-6)


def test_group_advantages_std_normalisation_uses_unbiased_std():
  rewards = np.random.RandomState(1).uniform(0, 1, (3, 8)).astype(np.float32)
  got = np.asarray(losses.group_advantages(rewards, normalize_std=True, eps=1e-6))
  reference = np.empty_like(rewards)
  for p, group in enumerate(rewards.astype(np.float64)):
    reference[p] = (group - group.mean()) / (group.std(ddof=1) + 1e-6)
  np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("normalize_std", [False, True])
def test_all_equal_rewards_give_zero_advantage(normalize_std):
  rewards = np.array([[1.0] * 8, [0.0] * 8, [0.5] * 8], np.float32)
  got = np.asarray(losses.group_advantages(rewards, normalize_std=normalize_std))
  assert np.all(got == 0.0)


def test_mixed_group_share_counts_the_groups_with_an_advantage():
  rewards = np.array([[0, 0, 0, 0], [1, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1], [0.5] * 4,
                      [0.25, 0.5, 0.5, 0.5]], np.float32)
  # Hand count: groups 1, 3 and 5 hold differing rewards.
  assert losses.mixed_group_share(rewards) == 0.5
  # The same groups are those with a nonzero advantage.
  nonzero = np.any(np.asarray(losses.group_advantages(rewards)) != 0, axis=1)
  assert nonzero.tolist() == [False, True, False, True, False, True]
  assert losses.differing_groups(rewards).tolist() == nonzero.tolist()
  assert losses.mixed_group_share(np.zeros((0, 4))) == 0.0


def test_grpo_config_defaults_are_the_paper_settings():
  config = losses.GRPOConfig()
  assert (config.group_size, config.clip_low, config.clip_high, config.kl_coef,
          config.kl_estimator, config.aggregation, config.normalize_std) == (
              8, 0.2, 0.28, 0.001, "k3", "token-mean", False)
  with pytest.raises(ValueError, match="kl_estimator"):
    losses.GRPOConfig(kl_estimator="k2")
  # The dual clip: verl's bound 3 by default; 0 (the config's "none") reaches the loss as None.
  assert config.loss_kwargs()["clip_ratio_c"] == 3.0
  assert losses.GRPOConfig(clip_ratio_c=0).loss_kwargs()["clip_ratio_c"] is None
  with pytest.raises(ValueError, match="clip_ratio_c"):
    losses.GRPOConfig(clip_ratio_c=0.5)
