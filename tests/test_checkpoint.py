"""Orbax checkpoints of a sharded TrainState (8 fake CPU devices), and the metric writer."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import re

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


# --- damaged checkpoints --------------------------------------------------------------------


def _largest_data_file(step_dir) -> str:
  files = [os.path.join(root, name) for root, _, names in os.walk(step_dir / "state")
           for name in names if os.sep + "d" + os.sep in os.path.join(root, name)]
  return max(files, key=os.path.getsize)


def _truncate(step_dir):
  path = _largest_data_file(step_dir)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _flip_a_byte(step_dir):
  # Orbax itself restores this file without an error, with a wrong value in one array.
  path = _largest_data_file(step_dir)
  data = bytearray(pathlib.Path(path).read_bytes())
  data[len(data) // 2] ^= 0x40
  pathlib.Path(path).write_bytes(bytes(data))


def _empty_metadata(step_dir):
  (step_dir / "state" / "_METADATA").write_text("")


DAMAGES = {"truncated": (_truncate, "bytes, .* were written"),
           "byte_flipped": (_flip_a_byte, "does not match its checksum"),
           "empty_metadata": (_empty_metadata, "state/_METADATA is unreadable")}


def _save_steps(directory, mesh, steps=(1, 2)):
  states = {step: _random_state(mesh, seed=10 + step, step=step) for step in steps}
  expected = {step: _host(state) for step, state in states.items()}
  with checkpoint.Checkpointer(directory) as checkpointer:
    for step in steps:
      checkpointer.save(states[step])
  return expected


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_latest_step_falls_back_to_the_previous_one(tmp_path, mesh, damage, caplog):
  expected = _save_steps(tmp_path, mesh)
  corrupt, reason = DAMAGES[damage]
  corrupt(tmp_path / "2")
  target = state_lib.abstract_train_state(CONFIG, OPTIMIZER, mesh)
  with checkpoint.Checkpointer(tmp_path) as reader:  # export / evaluate: params only
    with pytest.raises(checkpoint.CheckpointError, match=f"step 2 .*damaged: .*{reason}"):
      reader.restore_params(state_lib.abstract_params(CONFIG, mesh), step=2)
    params, _ = reader.restore_params(state_lib.abstract_params(CONFIG, mesh))
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(expected[1].params)):
    np.testing.assert_array_equal(got, want)
  assert sorted(os.listdir(tmp_path)) == ["1", "2"]  # reading params moves nothing
  with checkpoint.Checkpointer(tmp_path) as resumed:
    assert resumed.complete_steps() == [1, 2]
    caplog.clear()
    assert resumed.latest_step() == 1
    assert re.search(f"checkpoint step 2 under {tmp_path} is skipped: .*{reason}", caplog.text)
    restored, _ = resumed.restore(target)
    _assert_same(restored, expected[1], mesh)
    # Resuming from step 1 set step 2 aside, so that the run can save step 2 again.
    assert sorted(os.listdir(tmp_path)) == ["1", "2.damaged"]
    again = _random_state(mesh, seed=30, step=2)
    again_host = _host(again)
    resumed.save(again)
  with checkpoint.Checkpointer(tmp_path) as reopened:
    assert reopened.latest_step() == 2
    _assert_same(reopened.restore(target)[0], again_host, mesh)


def test_a_step_orbax_cannot_read_without_checksums_falls_back_too(tmp_path, mesh, caplog):
  """A step saved without checksums.json (by an older version) that orbax fails to read."""
  expected = _save_steps(tmp_path, mesh)
  os.remove(tmp_path / "2" / checkpoint.CHECKSUMS)
  _truncate(tmp_path / "2")
  with checkpoint.Checkpointer(tmp_path) as resumed:
    restored, _ = resumed.restore(state_lib.abstract_train_state(CONFIG, OPTIMIZER, mesh))
  _assert_same(restored, expected[1], mesh)
  assert re.search("checkpoint step 2 .* is skipped: orbax cannot read it", caplog.text)


def test_no_step_restores_names_the_directory_and_each_reason(tmp_path, mesh):
  _save_steps(tmp_path, mesh)
  _flip_a_byte(tmp_path / "2")
  _empty_metadata(tmp_path / "1")
  with checkpoint.Checkpointer(tmp_path) as resumed:
    assert resumed.latest_step() is None
    with pytest.raises(checkpoint.CheckpointError,
                       match=(f"no checkpoint under {tmp_path} can be restored \\(step 2: .*"
                              "checksum.*; step 1: state/_METADATA is unreadable")):
      resumed.restore(state_lib.abstract_train_state(CONFIG, OPTIMIZER, mesh))
  assert sorted(os.listdir(tmp_path)) == ["1", "2"]  # nothing moved when nothing restores
