"""`python -m atommem_jax.train` on two jax.distributed processes, against one process.

launch/local_multiprocess.sh runs the micro job of tests/test_train_cli.py on 2 processes x 2
CPU devices with mesh data=4, so every batch is split across the processes. The reference
is the same job on ONE process with 4 devices and the same mesh: the same global program,
so the two must agree step by step.

What is compared, and why it can be:
- SFT: every process builds the same global batch, so losses, gradient norms and token
  counts per step equal the one-process run's (up to the order of cross-device sums).
- GRPO: sampling is layout-invariant here. The rollout key is the same on every process,
  JAX's random bits do not depend on the sharding (threefry partitionable), and the logits
  of a row are computed on one device without cross-device sums (data parallel only), so
  both runs sample the same tokens, episodes and rewards. The 2-process batch holds the
  same rows as the 1-process batch, in another order and with other zero-weight padding
  rows, and the token-mean loss does not depend on either. A 4-step SFT policy never
  answers right (reward 0 for every episode, so every advantage is 0); the entropy bonus
  (grpo.entropy_coef) gives the update a gradient that depends on every row, so a GRPO
  batch missing or duplicating a process's rows would change loss, entropy and grad_norm.
  With every group uniform, dynamic sampling (grpo.max_draws=2) draws twice a step and
  trains on the first draw's groups, which each process picks out of its own episodes.
- Summaries: rollout metrics (response length, turns, invalid actions) and evaluations
  (EM, F1, operation counts, number of episodes) combine both processes' episodes; EM is
  0 for so short a run, the episode count (all 4 held-out contexts) shows that evaluations
  count every process's episodes.
- GRPO mini-batches (a separate probe): with num_minibatches > 1 each process splits its own
  rows, so a 2-process update is compared with one process stepping through the same
  mini-batches by hand, as grpo_update's docstring defines them.
- Files: metrics.jsonl has the one-process run's records, each once (process 0 writes); only
  process 0 prints; the exported weights are the one-process run's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from safetensors.numpy import load_file

from test_train_cli import MICRO

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "tiny.py")
FLAGS = (*MICRO, "--config.mesh.data=4", "--config.grpo.entropy_coef=0.01",
         "--config.grpo.max_draws=2")
# Per-step metrics that count (equal) and those computed in floating point (close).
COUNTS = {"sft": ("num_tokens",),
          "grpo": ("num_tokens", "num_updates", "reward_mean", "reward_std", "mixed_groups",
                   "exact_match", "creates", "reads", "updates", "deletes", "store_size",
                   "invalid", "response_length", "turns")}
VALUES = {"sft": ("loss", "grad_norm"),
          "grpo": ("loss", "pg_loss", "entropy", "grad_norm", "kl", "ratio_mean")}
# Timings differ between runs; everything else in a record is compared.
TIMINGS = ("time", "step_time_s", "tokens_per_s", "rollout_s", "seconds")


def _env(**extra: str) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false",
             HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra)
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _records(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _by_step(records: list[dict], stage: str) -> dict[int, dict[str, float]]:
  prefix = f"{stage}/"
  return {r["step"]: {name[len(prefix):]: value for name, value in r.items()
                      if name.startswith(prefix)}
          for r in records if any(name.startswith(prefix) for name in r)}


def _without_timings(summary: dict) -> dict:
  return {name: value for name, value in summary.items() if name not in TIMINGS}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_train_like_one_process_with_as_many_devices(tmp_path):
  multi, single, logs = (str(tmp_path / name) for name in ("multi", "single", "logs"))
  result = subprocess.run(
      ["bash", os.path.join(REPO, "launch", "local_multiprocess.sh"), "2", CONFIG, multi,
       *FLAGS],
      cwd=REPO, env=_env(DEVICES_PER_PROCESS="2", PYTHON=sys.executable, LOG_DIR=logs),
      capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  result = subprocess.run(
      [sys.executable, "-m", "atommem_jax.train", "--config", CONFIG, "--workdir", single,
       *FLAGS],
      cwd=REPO, env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"),
      capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]

  got, want = _records(multi), _records(single)
  assert [(r["step"], sorted(r)) for r in got] == [(r["step"], sorted(r)) for r in want]
  for stage, last_step in (("sft", 4), ("grpo", 6)):
    got_steps, want_steps = _by_step(got, stage), _by_step(want, stage)
    assert sorted(got_steps) == sorted(want_steps) and max(want_steps) == last_step
    for step, expected in want_steps.items():
      for name in COUNTS[stage]:
        assert got_steps[step][name] == expected[name], (stage, step, name)
      for name in VALUES[stage]:
        np.testing.assert_allclose(got_steps[step][name], expected[name], rtol=1e-5,
                                   atol=1e-7, err_msg=f"{stage} step {step}: {name}")
  grpo_losses = [r["loss"] for r in _by_step(want, "grpo").values()]
  assert all(loss != 0 for loss in grpo_losses), grpo_losses  # the update did something

  with open(os.path.join(multi, "evaluations.json")) as f:
    got_evaluations = json.load(f)
  with open(os.path.join(single, "evaluations.json")) as f:
    want_evaluations = json.load(f)
  assert sorted(got_evaluations) == ["grpo", "init", "sft"] == sorted(want_evaluations)
  for name, expected in want_evaluations.items():
    assert _without_timings(got_evaluations[name]) == _without_timings(expected), name
    assert got_evaluations[name]["episodes"] == 4  # both processes' episodes

  with open(os.path.join(logs, "process_0.log")) as f:
    assert "eval grpo: EM" in f.read()
  with open(os.path.join(logs, "process_1.log")) as f:
    assert "eval grpo: EM" not in f.read()

  got_weights = load_file(os.path.join(multi, "hf", "model.safetensors"))
  want_weights = load_file(os.path.join(single, "hf", "model.safetensors"))
  assert sorted(got_weights) == sorted(want_weights)
  for name, expected in want_weights.items():
    np.testing.assert_allclose(got_weights[name], expected, rtol=1e-5, atol=1e-6,
                               err_msg=name)


_PROBE = textwrap.dedent("""\
    import argparse, json, os
    parser = argparse.ArgumentParser()
    for flag in ("--config", "--workdir", "--coordinator_address"):
      parser.add_argument(flag)
    parser.add_argument("--num_processes", type=int)
    parser.add_argument("--process_id", type=int)
    args = parser.parse_args()
    import jax
    jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    from atommem_jax.model import sharding
    from atommem_jax.train import distributed

    def first_writer():
      path = os.path.join(args.workdir, "written_by")
      if not os.path.exists(path):
        with open(path, "w") as f:
          f.write(str(jax.process_index()))
      with open(path) as f:
        return int(f.read())

    def shards_or_error(sizes):
      try:
        return distributed.local_batch_shards(sharding.make_mesh(sizes))
      except ValueError as e:
        return str(e)

    value = {"process": jax.process_index(), "payload": "x" * (1000 * jax.process_index())}
    shown = dict(gathered=distributed.allgather_objects(value),
                 first_writer=distributed.process_zero_first(first_writer, "probe"),
                 data4=shards_or_error((4, 1, 1)), data2_tensor2=shards_or_error((2, 1, 2)),
                 tensor4=shards_or_error((1, 1, 4)))
    with open(os.path.join(args.workdir, f"{args.process_id}.json"), "w") as f:
      json.dump(shown, f)
""")


@pytest.mark.multiprocess
def test_distributed_helpers_on_two_processes(tmp_path):
  """Gathering, set-up order and the batch-layout check, against hand-worked layouts.

  jax.devices() lists process 0's 2 devices, then process 1's; a data axis of 4 gives each
  process 2 batch shards, data 2 x tensor 2 one each, and a tensor axis of 4 puts the one
  batch shard on both processes, which GRPO cannot train (each process has other episodes).
  """
  (tmp_path / "multihost_probe.py").write_text(_PROBE)
  workdir = tmp_path / "run"
  workdir.mkdir()
  result = subprocess.run(
      ["bash", os.path.join(REPO, "launch", "local_multiprocess.sh"), "2", CONFIG,
       str(workdir)],
      cwd=REPO, env=_env(MODULE="multihost_probe", DEVICES_PER_PROCESS="2",
                         PYTHON=sys.executable, LOG_DIR=str(tmp_path / "logs"),
                         PYTHONPATH=os.pathsep.join((str(tmp_path), REPO))),
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-4000:]
  for process in range(2):
    shown = json.loads((workdir / f"{process}.json").read_text())
    assert shown["gathered"] == [{"process": 0, "payload": ""},
                                 {"process": 1, "payload": "x" * 1000}]
    assert shown["first_writer"] == 0
    assert shown["data4"] == 2 and shown["data2_tensor2"] == 1
    assert "spans processes [0, 1]" in shown["tensor4"] and "mesh.tensor" in shown["tensor4"]


_MINIBATCH_PROBE = textwrap.dedent("""\
    import argparse, dataclasses, json, os
    parser = argparse.ArgumentParser()
    for flag in ("--config", "--workdir", "--coordinator_address"):
      parser.add_argument(flag)
    parser.add_argument("--num_processes", type=int, default=1)
    parser.add_argument("--process_id", type=int, default=0)
    args = parser.parse_args()
    import jax
    if args.num_processes > 1:
      jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    import numpy as np
    import optax
    from atommem_jax.model import qwen3, sharding
    from atommem_jax.model.config import Qwen3Config
    from atommem_jax.train import batch as batch_lib, losses, state as state_lib, steps

    config = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         head_dim=16, tie_word_embeddings=False, bos_token_id=None,
                         eos_token_id=2, pad_token_id=0)
    mesh = sharding.make_mesh((4, 1, 1))  # 2 batch shards on each of 2 processes
    rng = np.random.RandomState(0)
    examples = [batch_lib.Example(rng.randint(3, 64, rng.randint(2, 6)).tolist(),
                                  rng.randint(3, 64, rng.randint(2, 7)).tolist(),
                                  float(rng.choice([-1.0, 1.0]))) for _ in range(8)]
    batch = batch_lib.pad_examples(examples, length=16)  # the 8 rows of both processes
    noise = rng.uniform(-0.2, 0.2, batch.shape).astype(np.float32)
    batch = dataclasses.replace(batch, old_logprobs=((noise - np.log(64.0)) * np.asarray(
        batch.loss_mask)).astype(np.float32))  # first ratios 0.82-1.22: inside the clip range
    optimizer = optax.sgd(0.5)
    params = qwen3.init_params(config, jax.random.key(0), mesh)
    reference = qwen3.init_params(config, jax.random.key(1), mesh)
    state = state_lib.create_train_state(config, params, optimizer, mesh)
    grpo_step = steps.make_grpo_step(config, optimizer, losses.GRPOConfig(entropy_coef=0.01),
                                     mesh)
    key = jax.random.key(3)
    SHOWN = ("loss", "pg_loss", "entropy", "kl", "num_tokens")  # metrics compared
    if args.num_processes > 1:  # this process's 4 rows; grpo_update splits and shuffles them
      mine = batch_lib.take_rows(batch, np.arange(4 * args.process_id, 4 * args.process_id + 4))
      state, metrics = steps.grpo_update(grpo_step, state, reference, mine, num_minibatches=2,
                                         epochs=2, rng=key, mesh=mesh)
    else:  # the documented split by hand: mini-batch m is block m of each process's rows
      history = []
      for epoch in range(2):
        order = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), 4))
        for block in (order[:2], order[2:]):
          state, step_metrics = grpo_step(state, reference, batch_lib.take_rows(
              batch, np.concatenate([block, 4 + block])))
          history.append(jax.device_get(step_metrics))
      metrics = {name: float(np.mean([float(m[name]) for m in history])) for name in SHOWN}
    def local(x):  # params and step are replicated: any shard is the whole array
      return np.asarray(x.addressable_shards[0].data)
    shown = dict(metrics={name: float(metrics[name]) for name in SHOWN},
                 params={jax.tree_util.keystr(path): local(x).tolist()
                         for path, x in jax.tree_util.tree_leaves_with_path(state.params)},
                 step=int(local(state.step)))
    with open(os.path.join(args.workdir, f"{args.num_processes}_{args.process_id}.json"),
              "w") as f:
      json.dump(shown, f)
""")


@pytest.mark.multiprocess
def test_grpo_minibatches_on_two_processes_are_each_processes_row_blocks(tmp_path):
  """grpo_update with 2 mini-batches x 2 epochs (shuffled) on 2 processes x 2 devices equals
  one process with 4 devices stepping through the mini-batches its docstring describes: at
  each epoch the same permutation of every process's 4 rows, mini-batch m the m-th block of
  2 rows of each process. The entropy bonus makes every row's tokens move the update, so a
  mini-batch with other rows would end in other params."""
  (tmp_path / "minibatch_probe.py").write_text(_MINIBATCH_PROBE)
  workdir = tmp_path / "run"
  workdir.mkdir()
  env = _env(MODULE="minibatch_probe", DEVICES_PER_PROCESS="2", PYTHON=sys.executable,
             LOG_DIR=str(tmp_path / "logs"), PYTHONPATH=os.pathsep.join((str(tmp_path), REPO)))
  result = subprocess.run(
      ["bash", os.path.join(REPO, "launch", "local_multiprocess.sh"), "2", CONFIG,
       str(workdir)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-4000:]
  result = subprocess.run(
      [sys.executable, str(tmp_path / "minibatch_probe.py"), "--workdir", str(workdir)],
      cwd=REPO, env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4",
                         PYTHONPATH=os.pathsep.join((str(tmp_path), REPO))),
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-4000:]
  want = json.loads((workdir / "1_0.json").read_text())
  assert want["step"] == 4
  for process in range(2):
    got = json.loads((workdir / f"2_{process}.json").read_text())
    assert got["step"] == 4
    assert got["metrics"]["num_tokens"] == want["metrics"]["num_tokens"]
    for name in ("loss", "pg_loss", "entropy", "kl"):
      np.testing.assert_allclose(got["metrics"][name], want["metrics"][name], rtol=1e-5,
                                 atol=1e-7, err_msg=name)
    assert sorted(got["params"]) == sorted(want["params"])
    for name, expected in want["params"].items():
      np.testing.assert_allclose(got["params"][name], expected, rtol=1e-5, atol=1e-6,
                                 err_msg=name)
