"""`python -m atommem_jax.train` and `python -m atommem_jax.export` as a user runs them.

The job runs in subprocesses on one CPU device with a micro version of configs/tiny.py.
References: transformers loads the export (no missing keys) with the same weights as the
orbax checkpoint; a run killed with SIGKILL and restarted logs the same later losses as an
uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = (
    "--config.sft.steps=4", "--config.grpo.steps=2", "--config.checkpoint.every_steps=2",
    "--config.data.synthetic.train_contexts=8", "--config.data.synthetic.eval_contexts=4",
    "--config.eval.batch_size=4", "--config.grpo.questions_per_batch=2",
    "--config.grpo.group_size=2", "--config.sft.batch_size=4", "--config.env.max_steps=8",
    "--config.rollout.prompt_buckets=(256,)", "--config.rollout.max_new_tokens=24",
)
GRPO_FIELDS = ("grpo/loss", "grpo/reward_mean", "grpo/reward_std", "grpo/mixed_groups",
               "grpo/exact_match", "grpo/kl", "grpo/clip_frac", "grpo/entropy", "grpo/creates",
               "grpo/reads", "grpo/updates", "grpo/deletes", "grpo/store_size",
               "grpo/response_length", "grpo/tokens_per_s", "grpo/step_time_s")
SFT_FIELDS = ("sft/loss", "sft/tokens_per_s", "sft/step_time_s", "sft/grad_norm")


def _env() -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false",
             XLA_FLAGS="--xla_backend_optimization_level=0",  # one device, fast compiles
             HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _train_command(workdir: str, *overrides: str) -> list[str]:
  return [sys.executable, "-m", "atommem_jax.train", "--config",
          os.path.join(REPO, "configs", "tiny.py"), "--workdir", workdir, *MICRO,
          "--config.mesh.cpu_devices=0", *overrides]


def _run(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
  return subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True,
                        timeout=timeout)


def _metrics(workdir: str) -> dict[int, dict]:
  """The last record of every step (a resumed run re-logs the steps after its checkpoint)."""
  records: dict[int, dict] = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      records.setdefault(record["step"], {}).update(record)
  return records


def _losses(workdir: str, prefix: str) -> dict[int, float]:
  return {step: r[f"{prefix}/loss"] for step, r in _metrics(workdir).items()
          if f"{prefix}/loss" in r}


def test_train_end_to_end_and_export(tmp_path):
  """One micro run: its checkpoints, metrics and HF export; `export` and `evaluate` on it; then
  reruns in the same workdir, which keep the cached evaluations of the stages they keep."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  result = _run(_train_command(workdir))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "after SFT" in result.stdout and "after GRPO" in result.stdout, result.stdout
  assert "random init" in result.stdout
  for stage, last in (("sft", 4), ("grpo", 2)):
    assert os.path.isfile(os.path.join(workdir, "checkpoints", stage, str(last),
                                       "_CHECKPOINT_METADATA"))
  records = _metrics(workdir)
  assert all(field in records[5] for field in GRPO_FIELDS), sorted(records[5])
  assert all(field in records[1] for field in SFT_FIELDS), sorted(records[1])
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))

  model, info = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.join(workdir, "hf"), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  tokenizer = transformers.AutoTokenizer.from_pretrained(os.path.join(workdir, "hf"))
  assert len(tokenizer) <= model.config.vocab_size

  exported = str(tmp_path / "exported")
  result = _run([sys.executable, "-m", "atommem_jax.export", "--checkpoint", workdir,
                 "--out", exported])
  assert result.returncode == 0, result.stderr[-3000:]
  again = transformers.AutoModelForCausalLM.from_pretrained(exported)
  for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
    assert torch.equal(a, b), name  # the final GRPO checkpoint is the final policy
  assert os.path.isfile(os.path.join(exported, "tokenizer_config.json"))

  # `evaluate --checkpoint` rebuilds the model the run trained (the run grows the preset's
  # vocab to its tokenizer when it must) and replays the run's own
  # final evaluation through the same function: the same row, field for field (only the CLI
  # traces the reads behind answer_retrieved; evaluations.json adds the step).
  out = str(tmp_path / "eval")
  result = _run([sys.executable, "-m", "atommem_jax.evaluate", "--config",
                 os.path.join(REPO, "configs", "tiny.py"), *MICRO, "--checkpoint", workdir,
                 "--data", "synthetic", "--out", out])
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(out, "summary.json")) as f:
    replay = json.load(f)["datasets"]["synthetic"]
  with open(os.path.join(workdir, "evaluations.json")) as f:
    final = json.load(f)["grpo"]
  assert replay["contexts"] == 4 and replay["answer_retrieved"] is not None
  without = lambda row, *fields: {k: v for k, v in row.items() if k not in fields}
  assert (without(replay, "seconds", "answer_retrieved", "step")
          == without(final, "seconds", "answer_retrieved", "step"))

  # evaluations.json caches each stage's evaluation; a stage that trains again (its
  # checkpoints deleted) is evaluated again instead of showing the old policy's row.
  path = os.path.join(workdir, "evaluations.json")
  with open(path) as f:
    first = json.load(f)
  marked = {name: {**summary, "exact_match": 7.0} for name, summary in first.items()}
  with open(path, "w") as f:
    json.dump(marked, f)
  result = _run(_train_command(workdir))  # every stage complete: every row is the cache's
  assert result.returncode == 0, result.stderr[-3000:]
  with open(path) as f:
    assert {name: s["exact_match"] for name, s in json.load(f).items()} == {
        "init": 7.0, "sft": 7.0, "grpo": 7.0}
  shutil.rmtree(os.path.join(workdir, "checkpoints", "grpo"))
  result = _run(_train_command(workdir))  # GRPO trains again from the SFT checkpoint
  assert result.returncode == 0, result.stderr[-3000:]
  with open(path) as f:
    again = json.load(f)
  assert again["init"]["exact_match"] == again["sft"]["exact_match"] == 7.0
  # the same seed, the same policy
  assert without(again["grpo"], "seconds") == without(first["grpo"], "seconds")


def test_invalid_config_names_the_field(tmp_path):
  result = _run(_train_command(str(tmp_path / "run"), "--config.grpo.kl_estimator=k2"))
  assert result.returncode != 0
  assert "grpo.kl_estimator" in result.stderr
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_export_missing_checkpoint_dir(tmp_path):
  missing = str(tmp_path / "nowhere")
  result = _run([sys.executable, "-m", "atommem_jax.export", "--checkpoint", missing,
                 "--out", str(tmp_path / "hf")])
  assert result.returncode != 0
  assert "nowhere" in result.stderr and "no such directory" in result.stderr


def test_export_requires_flags(tmp_path):
  result = _run([sys.executable, "-m", "atommem_jax.export", "--out", str(tmp_path / "hf")])
  assert result.returncode != 0 and "--checkpoint" in result.stderr


def _kill_after_checkpoint(command: list[str], checkpoint_dir: str, timeout: float = 240
                           ) -> None:
  """Starts `command`, SIGKILLs it once `checkpoint_dir` holds a complete step."""
  process = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + timeout
  try:
    while time.monotonic() < deadline and process.poll() is None:
      if os.path.isdir(checkpoint_dir) and any(
          os.path.isfile(os.path.join(checkpoint_dir, step, "_CHECKPOINT_METADATA"))
          for step in os.listdir(checkpoint_dir) if step.isdigit()):
        process.send_signal(signal.SIGKILL)
        break
      time.sleep(0.02)
    assert process.poll() is None or process.returncode == -signal.SIGKILL, (
        "the run ended before its first checkpoint was complete")
  finally:
    process.kill()
    process.wait()


def _assert_resumed_like_uninterrupted(tmp_path, overrides: tuple[str, ...], stage: str,
                                       compare: tuple[str, ...]) -> None:
  resumed, straight = str(tmp_path / "resumed"), str(tmp_path / "straight")
  _kill_after_checkpoint(_train_command(resumed, *overrides),
                         os.path.join(resumed, "checkpoints", stage))
  for workdir in (resumed, straight):
    result = _run(_train_command(workdir, *overrides))
    assert result.returncode == 0, result.stderr[-3000:]
  for prefix in compare:
    got, want = _losses(resumed, prefix), _losses(straight, prefix)
    assert sorted(got) == sorted(want) and want
    np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)],
                               rtol=1e-6, atol=1e-7)


def test_sigkill_during_sft_resumes_with_the_same_losses(tmp_path):
  overrides = ("--config.sft.steps=6", "--config.grpo.steps=0",
               "--config.data.synthetic.eval_contexts=0")
  _assert_resumed_like_uninterrupted(tmp_path, overrides, "sft", ("sft",))


@pytest.mark.slow
def test_sigkill_during_grpo_resumes_with_the_same_losses(tmp_path):
  overrides = ("--config.grpo.steps=4", "--config.data.synthetic.eval_contexts=0")
  _assert_resumed_like_uninterrupted(tmp_path, overrides, "grpo", ("sft", "grpo"))


def test_demo_prints_the_table_and_a_rerun_reuses_the_main_run(tmp_path):
  """`make demo`'s entry point: both no-Update ablations, the second invocation on the same
  workdir reusing the main run's evaluations instead of training again."""
  workdir = str(tmp_path / "demo")
  demo = [sys.executable, "-m", "atommem_jax.demo", "--config",
          os.path.join(REPO, "configs", "tiny.py"), "--workdir", workdir, *MICRO]
  first = _run(demo + ["--ablation=eval"])
  assert first.returncode == 0, first.stderr[-3000:]
  # configs/tiny.py asks for 2 host devices: the demo is data parallel over the 2 cores.
  assert "mesh {'data': 2, 'fsdp': 1, 'tensor': 1}" in first.stdout + first.stderr
  with open(os.path.join(workdir, "demo_results.json")) as f:
    results = json.load(f)
  # the starting policy is not evaluated (the demo's 10 minutes)
  assert list(results["rows"]) == ["after SFT", "after GRPO", "SFT, Update refused"]
  for label in results["rows"]:
    assert label in first.stdout
  refused = results["rows"]["SFT, Update refused"]
  assert refused["updates"] == 0.0  # every Update was refused (counted as invalid)

  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = f.read()
  second = _run(demo + ["--ablation=sft"])
  assert second.returncode == 0, second.stderr[-3000:]
  with open(os.path.join(workdir, "demo_results.json")) as f:
    rerun = json.load(f)
  assert "no_update (own SFT)" in rerun["rows"] and "no_update (own SFT)" in second.stdout
  for label in ("after SFT", "after GRPO"):
    assert rerun["rows"][label] == results["rows"][label]  # cached, not retrained
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    assert f.read() == logged  # the main run logged no step again
  assert rerun["rows"]["no_update (own SFT)"]["updates"] == 0.0
  assert os.path.isfile(os.path.join(workdir, "no_update", "hf", "model.safetensors"))
  # The ablation trained in a second process, its output in its own log.
  log = os.path.join(workdir, "no_update.log")
  assert f"log {log}" in second.stdout
  with open(log) as f:
    assert f"workdir {os.path.join(workdir, 'no_update')}" in f.read()


_ORPHAN_SCRIPT = '''
import multiprocessing, os, signal, sys, time
from atommem_jax import demo

def child(path):
  demo._exit_with_parent(poll_seconds=0.1)
  with open(path + ".tmp", "w") as f:
    f.write(str(os.getpid()))
  os.rename(path + ".tmp", path)
  time.sleep(300)

if __name__ == "__main__":
  pool = multiprocessing.get_context("spawn").Pool(1)
  pool.apply_async(child, (sys.argv[1],))
  while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
  os.kill(os.getpid(), signal.SIGKILL)  # as `kill -9` of the demo's process would
'''


def _alive(pid: int) -> bool:
  """Whether `pid` runs (a zombie, exited but not yet reaped, does not)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False


def test_the_ablation_process_ends_when_the_demo_process_is_killed(tmp_path):
  """The demo's second process (a spawned pool worker, as the no-Update ablation runs) exits
  by itself once its parent is killed, instead of training on for minutes."""
  script = tmp_path / "orphan.py"
  script.write_text(_ORPHAN_SCRIPT)
  pid_file = str(tmp_path / "child.pid")
  with open(tmp_path / "parent.log", "w") as log:  # not a pipe: the child holds it open
    parent = subprocess.run([sys.executable, str(script), pid_file], cwd=REPO, env=_env(),
                            stdout=log, stderr=subprocess.STDOUT, timeout=120)
  assert parent.returncode == -signal.SIGKILL, (tmp_path / "parent.log").read_text()[-3000:]
  with open(pid_file) as f:
    child = int(f.read())
  try:
    deadline = time.monotonic() + 30
    while _alive(child) and time.monotonic() < deadline:
      time.sleep(0.1)
    assert not _alive(child)
  finally:
    if _alive(child):
      os.kill(child, signal.SIGKILL)
