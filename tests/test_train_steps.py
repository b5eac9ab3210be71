"""SFT / GRPO steps on a tiny Qwen3: learning, sharding invariance on 8 fake CPU devices,
gradient accumulation, packing, and the direction of GRPO updates.

Equivalence tests use plain SGD, so parameter deltas are the gradients themselves (Adam's
first step is about lr * sign(g) and would hide gradient errors).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
import optax
import pytest

from atommem_jax.model import qwen3
from atommem_jax.model import sharding
from atommem_jax.model.config import Qwen3Config
from atommem_jax.train import batch as batch_lib
from atommem_jax.train import losses
from atommem_jax.train import state as state_lib
from atommem_jax.train import steps

CONFIG = Qwen3Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                     tie_word_embeddings=False, bos_token_id=None, eos_token_id=2,
                     pad_token_id=0)
LENGTH = 16
SGD = optax.sgd(0.5)
# Large eps: Adam's update is smooth in g, so summation-order noise cannot flip a sign.
ADAM = state_lib.make_optimizer(state_lib.OptimizerConfig(lr=1e-2, warmup_steps=0, eps=1e-3))


@pytest.fixture(autouse=True)
def eight_devices():
  assert len(jax.devices()) == 8, (
      "tests/test_train_steps.py needs 8 devices: set "
      "XLA_FLAGS=--xla_force_host_platform_device_count=8 before jax is imported")


def _examples(count: int, seed: int = 0) -> list[batch_lib.Example]:
  rng = np.random.RandomState(seed)
  return [batch_lib.Example(rng.randint(3, CONFIG.vocab_size, rng.randint(2, 6)).tolist(),
                            rng.randint(3, CONFIG.vocab_size, rng.randint(2, 7)).tolist(),
                            float(rng.choice([-1.0, 1.0])))
          for _ in range(count)]


@pytest.fixture(scope="module")
def params():
  """Random host params like HF init (normal(0.02), norms 1), without compiling an init."""
  shapes = jax.eval_shape(functools.partial(qwen3.init_params, CONFIG), jax.random.key(0))
  rng = np.random.RandomState(0)
  return jax.tree_util.tree_map_with_path(
      lambda path, x: (np.ones(x.shape, np.float32) if "norm" in jax.tree_util.keystr(path)
                       else rng.normal(0, 0.02, x.shape).astype(np.float32)), shapes)


@functools.cache
def _mesh(mesh_shape):
  return None if mesh_shape is None else sharding.make_mesh(
      dict(zip(sharding.MESH_AXES, mesh_shape)))


@functools.cache
def _sft_step(optimizer, mesh_shape=None, grad_accum_steps=1, prompt_loss_weight=0.0):
  """One step function (and so one compilation per batch shape) shared by the tests."""
  return steps.make_sft_step(CONFIG, optimizer, _mesh(mesh_shape),
                             grad_accum_steps=grad_accum_steps,
                             prompt_loss_weight=prompt_loss_weight)


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _assert_trees_close(actual, expected, atol):
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=0, atol=atol, err_msg=jax.tree_util.keystr(path))


def _sft_batch():
  return batch_lib.pack_examples(_examples(12, seed=1), length=LENGTH, row_multiple=8)


def test_sft_steps_overfit_a_tiny_batch(params):
  state = state_lib.create_train_state(CONFIG, params, ADAM)
  sft_step = _sft_step(ADAM)
  batch = _sft_batch()
  history = []
  for _ in range(25):
    state, metrics = sft_step(state, batch)
    history.append(float(metrics["loss"]))
  assert int(state.step) == 25
  assert history[0] > 4.0  # ~log(128) at init
  assert history[-1] < 0.3 * history[0], history


@pytest.mark.parametrize("mesh_shape", [
    (2, 2, 2), pytest.param((1, 4, 2), marks=pytest.mark.slow)], ids=["2x2x2", "1x4x2"])
def test_sharded_sft_step_matches_unsharded(params, mesh_shape):
  batch = _sft_batch()

  def run(shape):
    state = state_lib.create_train_state(CONFIG, params, ADAM, _mesh(shape))
    sft_step = _sft_step(ADAM, shape)
    history = []
    for _ in range(2):
      state, metrics = sft_step(state, batch)
      history.append(_host(metrics))
    return state, history

  sharded_state, sharded = run(mesh_shape)
  expected_shardings = state_lib.state_shardings(CONFIG, ADAM, _mesh(mesh_shape))
  assert all(jax.tree.leaves(jax.tree.map(lambda leaf, s: leaf.sharding.is_equivalent_to(
      s, leaf.ndim), sharded_state, expected_shardings)))
  single_state, single = run(None)
  for got, want in zip(sharded, single):
    for name in ("loss", "grad_norm", "num_tokens"):
      np.testing.assert_allclose(got[name], want[name], rtol=1e-5, err_msg=name)
  _assert_trees_close(_host(sharded_state.params), _host(single_state.params), atol=2e-5)
  _assert_trees_close(_host(sharded_state.opt_state), _host(single_state.opt_state), atol=2e-5)


def _sgd_step_result(params, batch, grad_accum_steps=1, prompt_loss_weight=0.0):
  state = state_lib.create_train_state(CONFIG, params, SGD)
  state, metrics = _sft_step(SGD, None, grad_accum_steps, prompt_loss_weight)(state, batch)
  return _host(state.params), _host(metrics)


@pytest.mark.parametrize("prompt_loss_weight", [0.0, 0.3])
def test_gradient_accumulation_equals_one_big_batch(params, prompt_loss_weight):
  # Rows of different lengths: micro-batches hold different token counts, so averaging
  # per-micro-batch means would differ from the big batch.
  batch = batch_lib.pad_examples(_examples(8, seed=2), length=LENGTH)
  big_params, big = _sgd_step_result(params, batch, 1, prompt_loss_weight)
  accumulated_params, accumulated = _sgd_step_result(params, batch, 4, prompt_loss_weight)
  names = ("loss", "grad_norm") + (("prompt_loss", "response_loss") if prompt_loss_weight
                                    else ())
  for name in names:
    np.testing.assert_allclose(accumulated[name], big[name], rtol=1e-5, err_msg=name)
  _assert_trees_close(accumulated_params, big_params, atol=1e-6)
  if prompt_loss_weight:  # the prompt term is in the optimised loss, and so in the update
    plain_params, plain = _sgd_step_result(params, batch)
    np.testing.assert_allclose(big["response_loss"], plain["loss"], rtol=1e-6)
    np.testing.assert_allclose(big["loss"] - plain["loss"],
                               prompt_loss_weight * big["prompt_loss"]
                               * _prompt_to_response_ratio(batch), rtol=1e-4)
    assert not np.allclose(plain_params["embedder"]["embedding"],
                           big_params["embedder"]["embedding"], atol=1e-7)


def _prompt_to_response_ratio(batch):
  """Prompt target tokens / response target tokens of a batch (numpy, from its fields)."""
  segments, response = np.asarray(batch.segment_ids), np.asarray(batch.loss_mask)
  has_predecessor = (segments[:, 1:] != 0) & (segments[:, 1:] == segments[:, :-1])
  responses = (has_predecessor & (response[:, 1:] > 0)).sum()
  return (has_predecessor.sum() - responses) / responses


def test_packing_gives_the_same_loss_and_gradient_as_unpacked_rows(params):
  examples = _examples(8, seed=3)
  padded = batch_lib.pad_examples(examples, length=LENGTH)
  # Same [B, T] as the padded batch (so one compilation serves both), rows left empty.
  packed = batch_lib.pack_examples(examples, length=LENGTH, num_rows=len(examples))
  assert np.asarray(packed.segment_ids).max() > 1 and not np.asarray(packed.segment_ids)[-1].any()
  padded_params, padded_metrics = _sgd_step_result(params, padded)
  packed_params, packed_metrics = _sgd_step_result(params, packed)
  assert padded_metrics["num_tokens"] == packed_metrics["num_tokens"]
  np.testing.assert_allclose(packed_metrics["loss"], padded_metrics["loss"], rtol=1e-5)
  _assert_trees_close(packed_params, padded_params, atol=1e-6)


@pytest.mark.slow
def test_grpo_accumulation_with_seq_mean_equals_one_big_batch(params):
  grpo_config = losses.GRPOConfig(aggregation="seq-mean-token-mean", kl_coef=0.1)
  batch = batch_lib.pack_examples(_examples(10, seed=4), length=LENGTH, row_multiple=4)
  batch = dataclasses.replace(batch, old_logprobs=np.asarray(
      steps.make_logprobs_fn(CONFIG)(params, batch)) - 0.1 * np.asarray(batch.loss_mask))
  ref_params = jax.tree.map(lambda p: p * 0.9, params)

  def run(grad_accum_steps):
    state = state_lib.create_train_state(CONFIG, params, SGD)
    grpo_step = steps.make_grpo_step(CONFIG, SGD, grpo_config,
                                     grad_accum_steps=grad_accum_steps)
    state, metrics = grpo_step(state, ref_params, batch)
    return _host(state.params), _host(metrics)

  big_params, big = run(1)
  accumulated_params, accumulated = run(2)
  for name in ("loss", "pg_loss", "kl", "entropy", "ratio_max", "ratio_min", "num_tokens"):
    np.testing.assert_allclose(accumulated[name], big[name], rtol=1e-5, err_msg=name)
  _assert_trees_close(accumulated_params, big_params, atol=1e-6)


@pytest.mark.parametrize("mesh_shape", [None, pytest.param((2, 2, 2), marks=pytest.mark.slow)],
                         ids=["unsharded", "2x2x2"])
def test_grpo_update_moves_logprobs_with_the_advantage_sign(params, mesh_shape):
  mesh = _mesh(mesh_shape)
  examples = [batch_lib.Example(e.prompt_ids, e.response_ids, advantage)
              for e, advantage in zip(_examples(4, seed=5), [1.0, -1.0, 1.0, -1.0])]
  batch = batch_lib.pad_examples(examples, length=LENGTH)
  logprobs_fn = steps.make_logprobs_fn(CONFIG, mesh)
  ref_params = jax.device_put(params, qwen3.param_shardings(
      CONFIG, mesh or state_lib.single_device_mesh()))
  before = np.asarray(logprobs_fn(ref_params, batch))
  batch = dataclasses.replace(batch, old_logprobs=before)

  state = state_lib.create_train_state(CONFIG, ref_params, ADAM, mesh)
  grpo_step = steps.make_grpo_step(CONFIG, ADAM, losses.GRPOConfig(), mesh)
  state, metrics = steps.grpo_update(grpo_step, state, ref_params, batch,
                                     num_minibatches=2, epochs=2, rng=jax.random.key(1))
  assert metrics["num_updates"] == 4 and int(state.step) == 4
  after = np.asarray(logprobs_fn(state.params, batch))
  change = (after - before).sum(axis=1)  # summed response log-prob change per row
  assert change[0] > 0 and change[2] > 0, change
  assert change[1] < 0 and change[3] < 0, change
  # The reference params (the state's initial params) survived the donated updates.
  np.testing.assert_allclose(np.asarray(logprobs_fn(ref_params, batch)), before)


def test_steps_reject_batches_they_cannot_split(params):
  state = state_lib.create_train_state(CONFIG, params, SGD)
  batch = batch_lib.pad_examples(_examples(3), length=LENGTH)
  with pytest.raises(ValueError, match="grad_accum_steps=2"):
    steps.make_sft_step(CONFIG, SGD, grad_accum_steps=2)(state, batch)
  grpo_step = steps.make_grpo_step(CONFIG, SGD)
  with pytest.raises(ValueError, match="reference params"):
    grpo_step(state, None, batch)
  with pytest.raises(ValueError, match="num_minibatches=2"):
    steps.grpo_update(grpo_step, state, params, batch, num_minibatches=2)


def test_learning_rate_schedule_warms_up_then_holds():
  schedule = state_lib.learning_rate_schedule(state_lib.OptimizerConfig())
  np.testing.assert_allclose([float(schedule(s)) for s in (0, 10, 20, 100)],
                             [0.0, 5e-7, 1e-6, 1e-6], rtol=1e-6)
  cosine = state_lib.learning_rate_schedule(state_lib.OptimizerConfig(
      lr=1.0, warmup_steps=2, schedule="cosine", total_steps=6, min_lr_ratio=0.1))
  expected = [0.0, 0.5] + [0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * k / 4)) for k in range(5)]
  np.testing.assert_allclose([float(cosine(s)) for s in range(7)], expected, rtol=1e-6)


def test_chunked_sft_loss_gives_the_unchunked_step(params):
  """loss_chunk=4 (not dividing the 15 predicted positions) against the whole-row lm head
  (tests/test_logprobs.py checks the chunked log-probs against a dense log-softmax)."""
  batch = _sft_batch()

  def run(loss_chunk):
    state = state_lib.create_train_state(CONFIG, params, SGD)
    state, metrics = steps.make_sft_step(CONFIG, SGD, loss_chunk=loss_chunk)(state, batch)
    return _host(state.params), _host(metrics)

  (chunked_params, chunked), (whole_params, whole) = run(4), run(0)
  for name in ("loss", "grad_norm"):
    np.testing.assert_allclose(chunked[name], whole[name], rtol=1e-5, err_msg=name)
  _assert_trees_close(chunked_params, whole_params, atol=1e-6)


@pytest.mark.slow
def test_chunked_grpo_loss_gives_the_unchunked_step(params):
  """As above for GRPO: policy and reference log-probs at a temperature, and the entropy."""
  batch = batch_lib.pad_examples(_examples(8, seed=6), length=LENGTH)
  batch = dataclasses.replace(batch, old_logprobs=np.asarray(
      steps.make_logprobs_fn(CONFIG)(params, batch)) - 0.1 * batch.loss_mask)
  grpo_config = losses.GRPOConfig(entropy_coef=0.01, kl_coef=0.1, temperature=0.7)
  ref_params = jax.tree.map(lambda p: p * 0.9, params)

  def run(loss_chunk):
    state = state_lib.create_train_state(CONFIG, params, SGD)
    state, metrics = steps.make_grpo_step(CONFIG, SGD, grpo_config, loss_chunk=loss_chunk)(
        state, ref_params, batch)
    return _host(state.params), _host(metrics)

  (chunked_params, chunked), (whole_params, whole) = run(4), run(0)
  for name in ("loss", "pg_loss", "kl", "entropy", "ratio_mean", "grad_norm"):
    np.testing.assert_allclose(chunked[name], whole[name], rtol=1e-5, err_msg=name)
  _assert_trees_close(chunked_params, whole_params, atol=1e-6)


@pytest.mark.parametrize("grad_accum_steps,loss_chunk", [(1, 0), (2, 4)])
def test_recomputed_old_logprobs_make_the_first_ratio_exactly_one(params, grad_accum_steps,
                                                                  loss_chunk):
  """grpo_update with old_logprobs_fn (grpo.old_logprobs="recompute") replaces the sampler's
  old log-probs (here off by up to 0.3 nats, as a bf16 sampler's can be) by the policy's
  before the update: the one update's ratios are 1 to the last bits. Without it, the
  sampler's are used and the ratios are not 1."""
  rng = np.random.RandomState(7)
  batch = batch_lib.pad_examples(_examples(8, seed=7), length=LENGTH)
  temperature = 0.7
  logprobs_fn = steps.make_logprobs_fn(CONFIG, temperature=temperature,
                                       grad_accum_steps=grad_accum_steps, loss_chunk=loss_chunk)
  exact = np.asarray(logprobs_fn(params, batch))
  sampler = (exact + rng.uniform(-0.3, 0.3, exact.shape) * batch.loss_mask).astype(np.float32)
  batch = dataclasses.replace(batch, old_logprobs=sampler)
  grpo_step = steps.make_grpo_step(CONFIG, SGD, losses.GRPOConfig(temperature=temperature),
                                   grad_accum_steps=grad_accum_steps, loss_chunk=loss_chunk)

  def update(old_logprobs_fn):
    state = state_lib.create_train_state(CONFIG, params, SGD)
    return steps.grpo_update(grpo_step, state, params, batch, old_logprobs_fn=old_logprobs_fn)[1]

  recomputed = update(logprobs_fn)
  ulp = float(np.spacing(np.float32(1.0)))
  for name in ("ratio_mean", "ratio_max", "ratio_min"):
    assert abs(recomputed[name] - 1.0) <= ulp, (name, recomputed[name])
  assert recomputed["ppo_kl"] == pytest.approx(0.0, abs=1e-7)
  assert recomputed["clip_frac"] == 0.0
  sampled = update(None)
  assert sampled["ratio_max"] > 1.1 and sampled["ratio_min"] < 0.9, sampled


def test_micro_batch_rows_split_any_row_count_into_micro_batches_of_that_many_rows(params):
  # The batch's rows are split over the data and fsdp axes (4 shards here), not tensor.
  mesh = _mesh((2, 2, 2))
  rules = sharding.DEFAULT_RULES
  assert steps.batch_shards(mesh, rules) == 4
  assert [steps.micro_batch_count(rows, 1, 1, mesh, rules) for rows in (4, 8, 24)] == [1, 2, 6]
  assert steps.micro_batch_count(24, 3, 0, mesh, rules) == 3  # 0: grad_accum_steps decides
  with pytest.raises(ValueError, match="micro_batch_rows=2"):
    steps.micro_batch_count(12, 1, 2, mesh, rules)

  # Unsharded, 2 rows per micro-batch: 4 rows update exactly as grad_accum_steps=2 does.
  grpo_config = losses.GRPOConfig(kl_coef=0.1)
  batch = batch_lib.pad_examples(_examples(4, seed=6), length=LENGTH)
  old = steps.make_logprobs_fn(CONFIG, micro_batch_rows=2)(params, batch)
  np.testing.assert_allclose(np.asarray(old), np.asarray(steps.make_logprobs_fn(CONFIG)(
      params, batch)), rtol=1e-6, atol=1e-6)
  batch = dataclasses.replace(batch, old_logprobs=np.asarray(old) - 0.1 * batch.loss_mask)
  ref_params = jax.tree.map(lambda p: p * 0.9, params)

  def run(**split):
    state = state_lib.create_train_state(CONFIG, params, SGD)
    state, metrics = steps.make_grpo_step(CONFIG, SGD, grpo_config, **split)(
        state, ref_params, batch)
    return _host(state.params), _host(metrics)

  by_rows_params, by_rows = run(micro_batch_rows=2)
  by_count_params, by_count = run(grad_accum_steps=2)
  for name in ("loss", "pg_loss", "kl", "num_tokens"):
    np.testing.assert_allclose(by_rows[name], by_count[name], rtol=1e-6, err_msg=name)
  _assert_trees_close(by_rows_params, by_count_params, atol=1e-7)
  with pytest.raises(ValueError, match="micro_batch_rows=3"):
    steps.make_grpo_step(CONFIG, SGD, grpo_config, micro_batch_rows=3)(
        state_lib.create_train_state(CONFIG, params, SGD), ref_params, batch)


def test_grpo_with_max_targets_per_row_equals_the_whole_row_head(params):
  grpo_config = losses.GRPOConfig(kl_coef=0.1)
  examples = _examples(4, seed=7)
  batch = batch_lib.pad_examples(examples, length=LENGTH)
  most = max(len(e.response_ids) for e in examples)
  whole = steps.make_logprobs_fn(CONFIG)(params, batch)
  np.testing.assert_allclose(np.asarray(steps.make_logprobs_fn(
      CONFIG, max_targets_per_row=most)(params, batch)), np.asarray(whole), rtol=1e-6,
                             atol=1e-6)
  batch = dataclasses.replace(batch, old_logprobs=np.asarray(whole) - 0.1 * batch.loss_mask)
  ref_params = jax.tree.map(lambda p: p * 0.9, params)

  def run(bound):
    state = state_lib.create_train_state(CONFIG, params, SGD)
    state, metrics = steps.make_grpo_step(CONFIG, SGD, grpo_config, loss_chunk=4,
                                          max_targets_per_row=bound)(state, ref_params, batch)
    return _host(state.params), _host(metrics)

  gathered_params, gathered = run(most)
  whole_params, whole_metrics = run(0)
  for name in ("loss", "pg_loss", "kl", "entropy", "num_tokens"):
    np.testing.assert_allclose(gathered[name], whole_metrics[name], rtol=1e-5, err_msg=name)
  _assert_trees_close(gathered_params, whole_params, atol=1e-6)
  with pytest.raises(ValueError, match=f"trains {most} target tokens"):
    run(most - 1)


def test_bucket_rows_takes_the_smallest_ladder_count_that_holds_the_rows():
  ladder = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128]  # 2^k and 3 * 2^(k-1)
  for quantum in (1, 8, 16):
    for rows in range(0, 100 * quantum):
      expected = quantum * min(m for m in ladder if quantum * m >= rows)
      assert batch_lib.bucket_rows(rows, quantum) == expected, (rows, quantum)
  # A GRPO run's row counts (a row per turn: 64 episodes of 4-5 turns) share one shape.
  assert {batch_lib.bucket_rows(rows, 16) for rows in range(260, 380)} == {384}
  with pytest.raises(ValueError, match="quantum"):
    batch_lib.bucket_rows(5, 0)
