"""`python -m atommem_jax.evaluate` end to end: scripted and model policies, outputs, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from atommem_jax import config_lib as experiment_config
from atommem_jax import evaluate
from atommem_jax.data import multihop
from atommem_jax.data import tokenizer as tokenizer_lib
from atommem_jax.data.tokenizer import qwen3_tokenizer_dir
from atommem_jax.model import config as config_lib
from atommem_jax.model import hf
from atommem_jax.model import qwen3
from atommem_jax.model import sharding
from atommem_jax.train import checkpoint as checkpoint_lib
from atommem_jax.train import contexts as contexts_lib
from atommem_jax.train import evaluation
from atommem_jax.train import setup
from atommem_jax.train import stages
from atommem_jax.train import state as state_lib
import _paths

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TINY = os.path.join(_REPO, "configs", "tiny.py")
# The tiny config with the real Qwen3 tokenizer (its "synthetic" BPE is trained by the
# training run) and synthetic documents long enough for the generator.
_OVERRIDES = ["--config.tokenizer=qwen3", "--config.data.synthetic.doc_length=4",
              "--config.eval.batch_size=4", "--config.mesh.data=1"]


def _evaluate(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run([sys.executable, "-m", "atommem_jax.evaluate", f"--config={_TINY}",
                         *_OVERRIDES, *args], cwd=_REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)


def _hotpot_file(tmp_path) -> str:
  samples = multihop.read_dataset("hotpotqa", str(_paths.HOTPOTQA))
  contexts = multihop.build_long_contexts(samples[:3], num_docs=4, seed=0, pool=samples)
  path = str(tmp_path / "hotpot_small.jsonl")
  multihop.save_long_contexts(contexts, path)
  return path


def _check_outputs(out, datasets) -> dict:
  assert sorted(os.listdir(out)) == ["episodes.md", "summary.json", "summary.png"]
  summary = json.loads((out / "summary.json").read_text())
  assert sorted(summary["datasets"]) == sorted(datasets)
  for result in summary["datasets"].values():
    for field in ("contexts", "episodes", "questions", "documents_per_context", "exact_match",
                  "f1", "reward", "seconds"):
      assert field in result
    assert 0.0 <= result["answer_in_store"] <= 1.0 and 0.0 <= result["answer_retrieved"] <= 1.0
    for field in ("creates", "reads", "updates", "deletes", "final_store_size", "num_invalid"):
      assert field in result
  log = (out / "episodes.md").read_text()
  assert "### step 0" in log and "store after the step" in log
  assert (out / "summary.png").read_bytes()[:4] == b"\x89PNG"
  return summary


def test_oracle_through_the_cli_is_near_perfect(tmp_path):
  data = _hotpot_file(tmp_path)
  out = tmp_path / "out"
  run = _evaluate("--policy=oracle", "--data=synthetic", f"--data={data}", "--limit=4",
                  f"--out={out}", "--config.rollout.prompt_buckets=(1024,)")
  assert run.returncode == 0, run.stderr[-3000:]
  summary = _check_outputs(out, ["synthetic", "hotpot_small"])
  synthetic = summary["datasets"]["synthetic"]
  assert synthetic["contexts"] == 4 and synthetic["documents_per_context"] == 6
  assert synthetic["exact_match"] >= 0.75
  assert summary["datasets"]["hotpot_small"]["contexts"] == 3
  assert synthetic["creates"] > 0
  assert "EM" in run.stdout


def test_random_init_model_through_the_cli(tmp_path):
  out = tmp_path / "out"
  run = _evaluate("--data=synthetic", "--limit=2", f"--out={out}",
                  "--config.model.preset=micro-qwen-vocab",
                  "--config.rollout.max_new_tokens=4",
                  "--config.rollout.prompt_buckets=(512,)")
  assert run.returncode == 0, run.stderr[-3000:]
  summary = _check_outputs(out, ["synthetic"])
  assert summary["weights"] == "random init of micro-qwen-vocab"
  assert 0.0 <= summary["datasets"]["synthetic"]["exact_match"] <= 1.0


@pytest.mark.slow
def test_hf_dir_model_through_the_cli(tmp_path):
  config = config_lib.preset("micro-qwen-vocab")
  hf.save_hf(config, qwen3.init_params(config, jax.random.key(1)), str(tmp_path / "hf"),
             tokenizer_dir=qwen3_tokenizer_dir())
  out = tmp_path / "out"
  run = _evaluate("--data=synthetic", "--limit=2", f"--out={out}", f"--hf_dir={tmp_path}/hf",
                  "--config.rollout.max_new_tokens=4", "--config.rollout.prompt_buckets=(512,)")
  assert run.returncode == 0, run.stderr[-3000:]
  assert _check_outputs(out, ["synthetic"])["weights"] == f"{tmp_path}/hf"


def test_checkpoint_params_are_restored_in_the_rollout_dtype(tmp_path):
  config = config_lib.preset("micro")
  optimizer = state_lib.make_optimizer(state_lib.OptimizerConfig())
  state = state_lib.create_train_state(config, jax.random.key(0), optimizer)
  with checkpoint_lib.Checkpointer(tmp_path, async_save=False) as checkpointer:
    checkpointer.save(state, step=3)
    checkpointer.save(state, step=5)
  rollout_config = config.replace(param_dtype="bfloat16", dtype="bfloat16")
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  params = evaluate.restore_params(str(tmp_path), rollout_config, mesh)
  for restored, saved in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
    assert restored.dtype == np.dtype("bfloat16")
    np.testing.assert_array_equal(np.asarray(restored, np.float32),
                                  np.asarray(saved.astype("bfloat16"), np.float32))


@pytest.mark.parametrize("args, message", [
    (["--data=missing.jsonl"], "--data missing.jsonl: no such file"),
    (["--data=synthetic", "--checkpoint=.", "--hf_dir=."], "either --checkpoint"),
    ([], "--data is required"),
    (["--data=synthetic", "--config.env.chunk_tokens=0"], "chunk_tokens=0"),
])
def test_bad_flags_give_clear_errors(tmp_path, args, message):
  run = _evaluate(*args, f"--out={tmp_path}/out", timeout=120)
  assert run.returncode != 0
  assert message in run.stderr
  assert "Traceback" not in run.stderr


def test_answer_recall_counts_the_store_and_each_questions_own_reads():
  from types import SimpleNamespace as NS  # pylint: disable=g-import-not-at-top
  context = NS(questions=[multihop.Question("q0", "Where was Fime born?", ("Pari",)),
                          multihop.Question("q1", "Who owns Geku?", ("Vano", "V. Ano")),
                          multihop.Question("q2", "Where is Geku based?", ("Daso",))])
  memories = [NS(text="Fime: Fime was born in Pari."), NS(text="Geku: owned by V. Ano")]
  observations = [
      NS(phase="read", question_index=None, retrieved=[NS(text="Daso")]),  # not an answer step
      NS(phase="answer", question_index=0, retrieved=[]),
      NS(phase="answer", question_index=0, retrieved=[NS(text="Fime was born in Pari.")]),
      NS(phase="answer", question_index=1, retrieved=[NS(text="Fime was born in Pari.")]),
      NS(phase="answer", question_index=2, retrieved=[NS(text="Geku is based in Dasom.")])]
  rollout = NS(result=NS(memories=memories), observations=observations)
  # q0: in the store and read; q1: an alias in the store, never read; q2: neither ("Dasom"
  # is another word, and the read-phase "Daso" belongs to no answer step).
  assert evaluation.answer_recall(context, rollout) == ([1.0, 1.0, 0.0], [1.0, 0.0, 0.0])
  untraced = NS(result=NS(memories=memories), observations=())
  assert evaluation.answer_recall(context, untraced) == ([1.0, 1.0, 0.0], [])


def test_updated_exact_match_keeps_the_questions_whose_chain_was_superseded():
  from types import SimpleNamespace as NS  # pylint: disable=g-import-not-at-top
  old = multihop.Fact(0, "Fime lives in Pari.")
  new = multihop.Fact(3, "Update: Fime moved from Pari to Daso.")
  moved = multihop.Evidence(chain=(new,), superseded=(multihop.Supersession(old, new),))
  kept = multihop.Evidence(chain=(multihop.Fact(1, "Geku is owned by Vano."),), superseded=())
  rollout = NS(result=NS(exact_match=(1.0, 1.0, 0.0)))
  # q0 and q2 were updated (right, wrong); q1 was not and is left out.
  assert evaluation.updated_exact_match(NS(evidence=(moved, kept, moved)), rollout) == [1.0, 0.0]
  assert evaluation.updated_exact_match(NS(evidence=()), rollout) == []  # real benchmarks


_BPE_TEXTS = ["Document 1:\nVipe\nVipe lives in Puli. Vipe works for Gobe.",
              "Question: Where does the employer of Vipe live? Gobe is based in Puli."] * 20


@pytest.mark.slow
def test_the_train_loop_and_the_cli_give_one_row_for_one_checkpoint(tmp_path):
  """The train loop's evaluator (stages.make_evaluator) and `evaluate.run --checkpoint` on
  the run's checkpoint and held-out contexts: the same row, field for field (the CLI also
  traces the reads, for answer_retrieved). Two batches of the loop's batch size, so the
  per-batch seeding is exercised."""
  tokenizer_dir = str(tmp_path / "bpe")
  tokenizer_lib.train_bpe_tokenizer(_BPE_TEXTS, vocab_size=400, out_dir=tokenizer_dir)
  config = experiment_config.load_config_file("tiny")
  config.tokenizer = tokenizer_dir
  config.mesh.update(data=-1, fsdp=1, cpu_devices=0)
  config.data.synthetic.update(eval_contexts=3)
  config.eval.batch_size = 2
  config.env.max_steps = 6
  config.rollout.update(max_new_tokens=6, prompt_buckets=(256,))
  workdir = str(tmp_path / "run")
  job = setup.prepare(config, workdir)
  params = setup.initial_params(job, jax.random.key(3))
  optimizer = state_lib.make_optimizer(state_lib.OptimizerConfig())
  state = state_lib.create_train_state(job.model_config, params, optimizer, job.mesh)
  with stages.checkpointer(job, stages.SFT) as manager:
    manager.save(state, {"stage": stages.SFT, "stage_step": 1}, step=1, force=True)
  contexts = contexts_lib.load_contexts(config, "eval")
  assert len(contexts) == 3
  train_row = stages.make_evaluator(job, contexts)(state.params, "sft", 1)
  job.writer.close()
  cli_row = evaluate.run(config, ["synthetic"], str(tmp_path / "eval"),
                         checkpoint=workdir)["datasets"]["synthetic"]
  assert train_row["answer_retrieved"] is None and cli_row["answer_retrieved"] is not None
  untimed = lambda row: {k: v for k, v in row.items() if k not in ("seconds", "answer_retrieved")}
  assert untimed(cli_row) == untimed(train_row)
  assert train_row["contexts"] == train_row["episodes"] == 3 and train_row["steps"] > 0
