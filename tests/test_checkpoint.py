"""Orbax checkpoints of a sharded TrainState (8 fake CPU devices), and the metric writer."""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atommem_jax.model import qwen3
from atommem_jax.model import sharding
from atommem_jax.model.config import Qwen3Config
from atommem_jax.train import checkpoint
from atommem_jax.train import metrics as metrics_lib
from atommem_jax.train import state as state_lib

CONFIG = Qwen3Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                     bos_token_id=None, eos_token_id=2, pad_token_id=0)
OPTIMIZER = state_lib.make_optimizer(state_lib.OptimizerConfig())


@pytest.fixture(scope="module")
def mesh():
  assert len(jax.devices()) == 8, (
      "tests/test_checkpoint.py needs 8 devices: set "
      "XLA_FLAGS=--xla_force_host_platform_device_count=8 before jax is imported")
  return sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


def _random_state(mesh, seed: int, step: int) -> state_lib.TrainState:
  """A sharded state whose every leaf (Adam moments and counts included) is random."""
  target = state_lib.abstract_train_state(CONFIG, OPTIMIZER, mesh)
  rng = np.random.RandomState(seed)

  def leaf(abstract):
    if jax.dtypes.issubdtype(abstract.dtype, jax.dtypes.prng_key):
      return jax.device_put(jax.random.key(seed), abstract.sharding)
    if np.issubdtype(abstract.dtype, np.integer):
      value = rng.randint(0, 1000, abstract.shape).astype(abstract.dtype)
    else:
      value = rng.normal(size=abstract.shape).astype(abstract.dtype)
    return jax.device_put(value, abstract.sharding)

  state = jax.tree.map(leaf, target)
  return dataclasses.replace(state, step=jax.device_put(np.int32(step), target.step.sharding))


def _host(state: state_lib.TrainState):
  return jax.device_get(dataclasses.replace(state, rng=jax.random.key_data(state.rng)))


def _assert_same(restored: state_lib.TrainState, expected_host, mesh):
  assert jax.tree.structure(restored) == jax.tree.structure(
      state_lib.abstract_train_state(CONFIG, OPTIMIZER, mesh))
  for got, want in zip(jax.tree.leaves(_host(restored)), jax.tree.leaves(expected_host)):
    np.testing.assert_array_equal(got, want)


def test_round_trip_is_exact_and_sharded(tmp_path, mesh):
  state = _random_state(mesh, seed=0, step=7)
  expected = _host(state)
  with checkpoint.Checkpointer(tmp_path) as checkpointer:
    assert checkpointer.save(state, {"data_position": 123, "stage": "grpo"})
  target = state_lib.abstract_train_state(CONFIG, OPTIMIZER, mesh)
  with checkpoint.Checkpointer(tmp_path) as resumed:
    restored, meta = resumed.restore(target)
  assert meta == {"data_position": 123, "stage": "grpo"}
  assert int(restored.step) == 7
  _assert_same(restored, expected, mesh)
  for leaf, abstract in zip(jax.tree.leaves(restored), jax.tree.leaves(target)):
    assert leaf.sharding.is_equivalent_to(abstract.sharding, leaf.ndim)
  assert restored.params["embedder"]["embedding"].sharding.spec == qwen3.param_shardings(
      CONFIG, mesh)["embedder"]["embedding"].spec
  # The RNG resumes where it was: the next keys drawn are identical.
  _, key = state_lib.split_rng(restored)
  _, expected_key = state_lib.split_rng(state)
  np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(expected_key))


def test_restore_params_reads_only_params_in_the_target_dtype_and_sharding(tmp_path, mesh):
  state = _random_state(mesh, seed=3, step=5)
  expected = jax.device_get(state.params)
  with checkpoint.Checkpointer(tmp_path) as checkpointer:
    assert checkpointer.save(state, {"stage": "sft"})
  # No optimizer in the target: a run's optimizer structure does not matter here.
  bf16 = state_lib.abstract_params(CONFIG.replace(param_dtype="bfloat16"), mesh)
  with checkpoint.Checkpointer(tmp_path) as resumed:
    params, meta = resumed.restore_params(bf16)
  assert meta == {"stage": "sft"}
  for leaf, want, abstract in zip(jax.tree.leaves(params), jax.tree.leaves(expected),
                                  jax.tree.leaves(bf16)):
    assert leaf.dtype == jnp.bfloat16
    assert leaf.sharding.is_equivalent_to(abstract.sharding, leaf.ndim)
    np.testing.assert_array_equal(np.asarray(leaf), np.asarray(want).astype(jnp.bfloat16))
  with checkpoint.Checkpointer(tmp_path) as resumed:
    with pytest.raises(FileNotFoundError, match="complete steps: \\[5\\]"):
      resumed.restore_params(bf16, step=4)


def test_relative_directory_is_resolved_against_the_working_directory(tmp_path, mesh,
                                                                      monkeypatch):
  # `--workdir workdir/demo` is relative; orbax itself accepts only absolute paths.
  monkeypatch.chdir(tmp_path)
  state = _random_state(mesh, seed=6, step=3)
  with checkpoint.Checkpointer(os.path.join("runs", "a")) as checkpointer:
    assert checkpointer.save(state, {"stage": "sft"})
  assert os.listdir(tmp_path / "runs" / "a") == ["3"]
  monkeypatch.chdir(tmp_path / "runs")
  with checkpoint.Checkpointer("a") as resumed:
    restored, meta = resumed.restore(state_lib.abstract_train_state(CONFIG, OPTIMIZER, mesh))
  assert meta == {"stage": "sft"}
  _assert_same(restored, _host(state), mesh)


def test_keeps_the_last_n_checkpoints(tmp_path, mesh):
  with checkpoint.Checkpointer(tmp_path, max_to_keep=2) as checkpointer:
    for step in (1, 2, 3):
      checkpointer.save(_random_state(mesh, seed=step, step=step))
    checkpointer.wait_until_finished()
    assert checkpointer.complete_steps() == [2, 3]
    assert checkpointer.latest_step() == 3
  assert sorted(os.listdir(tmp_path)) == ["2", "3"]


def test_async_save_survives_donation_of_the_saved_state(tmp_path, mesh):
  state = _random_state(mesh, seed=4, step=11)
  expected = _host(state)
  checkpointer = checkpoint.Checkpointer(tmp_path, async_save=True)
  checkpointer.save(state, {"stage": "sft"})
  for leaf in jax.tree.leaves(state):  # what the next donated train step does to it
    leaf.delete()
  checkpointer.wait_until_finished()
  restored, _ = checkpointer.restore(state_lib.abstract_train_state(CONFIG, OPTIMIZER, mesh))
  checkpointer.close()
  _assert_same(restored, expected, mesh)


def test_half_written_checkpoints_are_never_loaded(tmp_path, mesh):
  state = _random_state(mesh, seed=5, step=2)
  expected = _host(state)
  with checkpoint.Checkpointer(tmp_path) as checkpointer:
    checkpointer.save(_random_state(mesh, seed=6, step=1))
    checkpointer.save(state)
  # A save killed before orbax's rename, and a step directory copied only in part.
  tmp_dir = tmp_path / "3.orbax-checkpoint-tmp-1700000000000000"
  (tmp_dir / "state").mkdir(parents=True)
  (tmp_dir / "state" / "garbage").write_text("partial")
  (tmp_path / "4" / "state").mkdir(parents=True)
  (tmp_path / "4" / "state" / "garbage").write_text("partial")

  resumed = checkpoint.Checkpointer(tmp_path)
  assert resumed.complete_steps() == [1, 2]
  restored, _ = resumed.restore(state_lib.abstract_train_state(CONFIG, OPTIMIZER, mesh))
  _assert_same(restored, expected, mesh)
  with pytest.raises(FileNotFoundError, match="step 4"):
    resumed.restore(state_lib.abstract_train_state(CONFIG, OPTIMIZER, mesh), step=4)
  resumed.close()


def test_restore_without_checkpoints_says_so(tmp_path, mesh):
  checkpointer = checkpoint.Checkpointer(tmp_path / "empty")
  assert checkpointer.latest_step() is None
  with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
    checkpointer.restore(state_lib.abstract_train_state(CONFIG, OPTIMIZER, mesh))
  checkpointer.close()


def test_created_state_has_the_checkpoint_layout(mesh):
  shapes = jax.eval_shape(functools.partial(qwen3.init_params, CONFIG), jax.random.key(0))
  params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)
  state = state_lib.create_train_state(CONFIG, params, OPTIMIZER, mesh, rng=jax.random.key(3))
  target = state_lib.abstract_train_state(CONFIG, OPTIMIZER, mesh)
  assert jax.tree.structure(state) == jax.tree.structure(target)
  for leaf, abstract in zip(jax.tree.leaves(state), jax.tree.leaves(target)):
    assert (leaf.shape, leaf.dtype) == (abstract.shape, abstract.dtype)
    assert leaf.sharding.is_equivalent_to(abstract.sharding, leaf.ndim)


# --- metrics ------------------------------------------------------------------------------


def test_metric_writer_writes_json_lines_and_tensorboard(tmp_path):
  with metrics_lib.MetricWriter(str(tmp_path)) as writer:
    writer.write(1, {"loss": np.float32(2.5), "kl": jax.numpy.array(0.125)}, prefix="train/")
    writer.write(2, {"loss": float("nan")}, prefix="train/")
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert lines[0]["step"] == 1 and lines[0]["train/loss"] == 2.5
  assert lines[0]["train/kl"] == 0.125
  assert lines[1]["train/loss"] == "nan"
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))


def test_step_timer_reports_tokens_per_second():
  timer = metrics_lib.StepTimer()
  timer.start()
  stats = timer.stop(1000, outputs=jax.numpy.ones(3))
  assert stats["step_time_s"] > 0
  np.testing.assert_allclose(stats["tokens_per_s"], 1000 / stats["step_time_s"], rtol=1e-6)
  with pytest.raises(RuntimeError, match="before start"):
    timer.stop(1)
