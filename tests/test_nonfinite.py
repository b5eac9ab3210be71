"""A NaN or inf loss or gradient: the jitted step keeps the old state, the train CLI stops.

Reference: a step that refused its update leaves no trace, so skipping a bad batch and then
taking a good one equals taking the good one from the start (bit for bit); the train CLI's
newest checkpoint after the stop is the last step whose update was finite.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from atommem_jax.model import qwen3
from atommem_jax.model import sharding
from atommem_jax.model.config import Qwen3Config
from atommem_jax.train import batch as batch_lib
from atommem_jax.train import losses
from atommem_jax.train import state as state_lib
from atommem_jax.train import steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = Qwen3Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                     bos_token_id=None, eos_token_id=2, pad_token_id=0)
OPTIMIZER = state_lib.make_optimizer(state_lib.OptimizerConfig(lr=1e-2, warmup_steps=0))


@pytest.fixture(scope="module")
def mesh():
  assert len(jax.devices()) == 8, "tests/test_nonfinite.py needs 8 (fake CPU) devices"
  return sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


@pytest.fixture(scope="module")
def host_params():
  shapes = jax.eval_shape(functools.partial(qwen3.init_params, CONFIG), jax.random.key(0))
  rng = np.random.RandomState(0)
  return jax.tree.map(lambda x: rng.normal(0, 0.02, x.shape).astype(np.float32), shapes)


def _batch(advantages: tuple[float, ...]) -> batch_lib.TrainBatch:
  rng = np.random.RandomState(1)
  examples = [batch_lib.Example(rng.randint(3, 128, 4).tolist(), rng.randint(3, 128, 5).tolist(),
                                advantage) for advantage in advantages]
  return batch_lib.pad_examples(examples, length=16, pad_id=0)


def _state(host_params, mesh) -> state_lib.TrainState:
  return state_lib.create_train_state(CONFIG, host_params, OPTIMIZER, mesh,
                                      rng=jax.random.key(0))


def _host(state: state_lib.TrainState):
  return jax.device_get((state.step, state.params, state.opt_state))


def _assert_equal(got, want):
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)


def test_sft_step_with_a_nan_parameter_keeps_the_old_state(host_params, mesh):
  poisoned = jax.tree.map(np.copy, host_params)
  poisoned["final_norm"]["scale"][0] = np.nan
  sft_step = steps.make_sft_step(CONFIG, OPTIMIZER, mesh, grad_accum_steps=2)
  state = _state(poisoned, mesh)
  before = _host(state)
  state, metrics = sft_step(state, _batch((0.0,) * 8))
  assert float(metrics["update_skipped"]) == 1.0
  assert not np.isfinite(float(metrics["loss"]))
  _assert_equal(_host(state), before)  # the state was donated: this is the kept copy
  assert int(state.step) == 0

  state, metrics = sft_step(_state(host_params, mesh), _batch((0.0,) * 8))
  assert float(metrics["update_skipped"]) == 0.0 and int(state.step) == 1


@pytest.fixture(scope="module")
def grpo_step(mesh):
  return steps.make_grpo_step(CONFIG, OPTIMIZER, losses.GRPOConfig(kl_estimator="none"), mesh)


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_grpo_step_skipping_a_bad_batch_leaves_no_trace(host_params, mesh, grpo_step, bad):
  rows = (1.0, -1.0, 0.5, -0.5, 0.25, -0.25, 2.0, -2.0)
  good, poisoned = _batch(rows), _batch((bad,) + rows[1:])

  expected, metrics = grpo_step(_state(host_params, mesh), None, good)
  assert float(metrics["update_skipped"]) == 0.0

  state, metrics = grpo_step(_state(host_params, mesh), None, poisoned)
  assert float(metrics["update_skipped"]) == 1.0
  assert not np.isfinite(float(metrics["loss"]))
  state, metrics = grpo_step(state, None, good)
  assert float(metrics["update_skipped"]) == 0.0
  _assert_equal(_host(state), _host(expected))

  # grpo_update's summary shows the skipped update among the others (mean of 0 / 1).
  bad_row_last = batch_lib.take_rows(poisoned, np.array([1, 2, 3, 4, 0, 5, 6, 7]))
  state, summary = steps.grpo_update(grpo_step, _state(host_params, mesh), None, bad_row_last,
                                     num_minibatches=2)
  assert summary["update_skipped"] == 0.5 and int(state.step) == 1


@pytest.mark.slow
def test_train_cli_stops_at_the_diverged_step_and_keeps_the_last_good_checkpoint(tmp_path):
  """lr 1e30 overflows the params in a few steps; the run stops there with the step and the
  stage named, and its newest checkpoint is the step before."""
  workdir = tmp_path / "run"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0",
             TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  command = [sys.executable, "-m", "atommem_jax.train", "--config",
             os.path.join(REPO, "configs", "tiny.py"), "--workdir", str(workdir),
             "--config.sft.steps=8", "--config.grpo.steps=0", "--config.sft.lr=1e30",
             "--config.sft.warmup_steps=0", "--config.sft.schedule=constant",
             "--config.sft.grad_clip=0", "--config.checkpoint.every_steps=1",
             "--config.checkpoint.max_to_keep=20", "--config.sft.batch_size=4",
             "--config.data.synthetic.train_contexts=4",
             "--config.data.synthetic.eval_contexts=0", "--config.env.max_steps=8",
             "--config.rollout.prompt_buckets=(256,)", "--config.rollout.max_new_tokens=24",
             "--config.mesh.cpu_devices=0"]
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  sft = [r for r in records if "sft/loss" in r]
  bad_step = sft[-1]["step"]
  assert sft[-1]["sft/update_skipped"] == 1.0 and all(
      r["sft/update_skipped"] == 0.0 for r in sft[:-1])
  assert f"error: sft step {bad_step}:" in result.stderr
  assert "the update was not applied and the run stops" in result.stderr
  saved = sorted(int(name) for name in os.listdir(workdir / "checkpoints" / "sft")
                 if name.isdigit())
  assert bad_step > 1 and saved == list(range(1, bad_step)), (saved, bad_step)
  assert f"step {bad_step - 1} of" in result.stderr
  assert not (workdir / "hf").exists()
