"""The whole training job: tokenizer, pretraining, SFT, GRPO, evaluation, export; resumable.

`run(config, workdir)` is what `python -m atommem_jax.train` calls. With pretrain.steps > 0
the model is first pretrained (`stages.run_pretrain`), and SFT, GRPO or the export start
from that base. Evaluations (random init, after pretraining, after SFT, after GRPO) are
cached in workdir/evaluations.json, so a resumed run does not repeat them; a stage that
trains in this run drops its cached evaluation (and those of the stages after it), so a
rerun whose checkpoints were deleted never shows the old policy's row. The final policy is
exported to workdir/hf (or export.hf_dir).

The workdir may be a URL (gs://, s3://: `atommem_jax.fileio`). On several processes (hosts)
every process calls `run` with the same config and a workdir on a shared file system or URL;
process 0 prepares the workdir first and writes every file but the checkpoints (which each
process writes its shards of), and every process follows process 0's record of finished
evaluations, so that all of them take the same steps.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import jax
import ml_collections

from atommem_jax import fileio
from atommem_jax.model import hf
from atommem_jax.train import contexts as contexts_lib
from atommem_jax.train import distributed
from atommem_jax.train import setup
from atommem_jax.train import stages

EVALUATIONS_FILE = "evaluations.json"
ROWS = (("init", "random init"), ("pretrain", "after pretraining"), ("sft", "after SFT"),
        ("grpo", "after GRPO"))


def _load_evaluations(workdir: str) -> dict[str, dict[str, float]]:
  """The evaluations already done, as process 0 reads them (every process skips the same)."""
  path = fileio.join(workdir, EVALUATIONS_FILE)
  evaluations = {}
  if fileio.isfile(path):
    evaluations = json.loads(fileio.read_text(path))
  return distributed.allgather_objects(evaluations)[0]


def _prepare(config: ml_collections.ConfigDict, workdir: str) -> setup.Job:
  return distributed.process_zero_first(lambda: setup.prepare(config, workdir),
                                        f"prepare {workdir}")


def _write_evaluations(workdir: str, evaluations: dict) -> None:
  if jax.process_index() == 0:
    fileio.write_text(fileio.join(workdir, EVALUATIONS_FILE), json.dumps(evaluations, indent=2))


def _store_evaluation(workdir: str, evaluations: dict, name: str, summary: dict) -> None:
  evaluations[name] = summary
  _write_evaluations(workdir, evaluations)


def _forget_evaluations(workdir: str, evaluations: dict, names: tuple[str, ...]) -> None:
  """Drops (on disk too, at once) the cached evaluations of stages about to be retrained."""
  if any(evaluations.pop(name, None) is not None for name in names):
    _write_evaluations(workdir, evaluations)


def format_table(rows: list[tuple[str, dict[str, float]]]) -> str:
  """A plain-text table of evaluation summaries (one row per policy)."""
  columns = ("exact_match", "exact_match_updated", "answer_in_store", "f1", "creates", "reads",
             "updates", "deletes", "final_store_size", "num_invalid")
  widths = [max(12, len(c) + 1) for c in columns]
  lines = [f"{'policy':<22}" + "".join(f"{c:>{w}}" for c, w in zip(columns, widths))]
  for name, summary in rows:
    values = [summary.get(c) for c in columns]
    lines.append(f"{name:<22}" + "".join(
        f"{float('nan') if value is None else value:>{w}.3f}" for value, w in zip(values, widths)))
  return "\n".join(lines)


def table_rows(config: ml_collections.ConfigDict, evaluations: dict[str, dict[str, Any]]
               ) -> list[tuple[str, dict[str, Any]]]:
  """(label, summary) of each evaluation done, in ROWS order; the policy before training is
  "model.hf_dir" (its weights, e.g. the demo's pretrained base) when the run starts from one."""
  labels = {**dict(ROWS), **({"init": "model.hf_dir"} if config.model.hf_dir else {})}
  return [(labels[name], evaluations[name]) for name, _ in ROWS if name in evaluations]


def run(config: ml_collections.ConfigDict, workdir: str, *,
        evaluate_init: bool = True) -> dict[str, Any]:
  """Runs (or resumes) every stage in `workdir`; returns {"evaluations", "seconds", ...}.

  `evaluate_init=False` skips the evaluation of the random init (ablation runs).
  """
  started = time.perf_counter()
  job = _prepare(config, workdir)
  job.log(f"model: {job.model_config.num_params() / 1e6:.2f}M parameters, vocab "
          f"{job.model_config.vocab_size} (tokenizer {len(job.tokenizer)} entries); mesh "
          f"{dict(job.mesh.shape)}; workdir {workdir}")
  train_contexts = contexts_lib.load_contexts(config, "train")
  eval_contexts = contexts_lib.load_contexts(config, "eval")
  evaluate = stages.make_evaluator(job, eval_contexts)
  evaluations = _load_evaluations(workdir)

  def evaluate_once(name: str, params, step: int) -> None:
    if evaluations.get(name, {}).get("step") != step and eval_contexts:
      _store_evaluation(workdir, evaluations, name, {**evaluate(params, name, step),
                                                     "step": step})

  examples = []  # built once: to count them (sft.steps=-1) or to train on them

  def count_examples() -> int:
    examples[:] = stages.sft_examples(job, train_contexts)
    return len(examples)

  sft_steps = setup.stage_steps(job, stages.SFT, count_examples)
  grpo_steps = setup.stage_steps(job, stages.GRPO, lambda: len(train_contexts))
  job = setup.with_steps(job, sft=sft_steps, grpo=grpo_steps)
  init_key = jax.random.key(config.seed)
  pretrain_steps = config.pretrain.steps
  pretrain_done = stages.stage_progress(job, stages.PRETRAIN) if pretrain_steps else 0
  sft_done = stages.stage_progress(job, stages.SFT)
  grpo_done = stages.stage_progress(job, stages.GRPO)
  later_started = sft_done > 0 or grpo_done > 0
  fresh = pretrain_done == 0 and not later_started
  evaluate_start = evaluate_init and "init" not in evaluations and fresh
  # The policy before training (model.hf_dir's weights, else a random init), read only where
  # it is evaluated or a stage starts from it: a stage resuming from its checkpoint never
  # reads it. A stage from random init keeps its own key (`state.create_train_state`).
  hf_start = bool(config.model.hf_dir)
  initial = (setup.initial_params(job, init_key)
             if evaluate_start or not (sft_steps or pretrain_steps) or (hf_start and fresh)
             else None)
  if evaluate_start:
    evaluate_once("init", initial, 0)
  start = initial if hf_start else init_key  # where the first stage starts from

  # The base SFT starts from (GRPO, or the export, without SFT): the pretrained params when
  # pretraining, read only where a stage starts from it or it is exported (pretraining runs
  # or resumes only while no later stage has started).
  base = initial
  if pretrain_steps:
    if not later_started:
      if pretrain_done < pretrain_steps:  # the cached rows after it are of another base
        _forget_evaluations(workdir, evaluations, ("pretrain", "sft", "grpo"))
      base = stages.run_pretrain(job, start, train_contexts, 0, evaluate)
    elif not sft_steps:
      base = stages.restore_params(job, stages.PRETRAIN)
    if base is not None:
      evaluate_once("pretrain", base, pretrain_steps)
    start = base

  params = None
  if sft_steps and grpo_done == 0:
    sft_trains = sft_done < sft_steps
    if sft_trains:  # the cached SFT row, and GRPO's after it, are of another policy
      _forget_evaluations(workdir, evaluations, ("sft", "grpo"))
    if sft_trains and not examples:
      examples[:] = stages.sft_examples(job, train_contexts)
    params = stages.run_sft(job, start, examples, pretrain_steps, evaluate)
  elif sft_steps:
    params = stages.restore_params(job, stages.SFT)
  if params is None:
    params = base
  if sft_steps:
    evaluate_once("sft", params, pretrain_steps + sft_steps)

  if grpo_steps:
    if grpo_done < grpo_steps:
      _forget_evaluations(workdir, evaluations, ("grpo",))
    reference = (stages.restore_params(job, stages.SFT) if sft_steps else
                 jax.tree.map(lambda x: x.copy(), params))
    params = stages.run_grpo(job, params, reference, train_contexts,
                             pretrain_steps + sft_steps, evaluate)
    evaluate_once("grpo", params, pretrain_steps + sft_steps + grpo_steps)

  hf_dir = config.export.hf_dir or fileio.join(workdir, "hf")
  hf.save_hf(job.model_config, params, hf_dir, tokenizer_dir=job.tokenizer_dir)
  job.writer.close()
  seconds = time.perf_counter() - started
  rows = table_rows(config, evaluations)
  if rows:
    job.log("\n" + format_table(rows))
  job.log(f"exported the final policy to {hf_dir}; total {seconds:.0f}s")
  return {"evaluations": evaluations, "seconds": seconds, "hf_dir": hf_dir}


def evaluate_without_update(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """The finished run's SFT policy evaluated in an environment that refuses Update."""
  job = _prepare(config, workdir)
  job = dataclasses.replace(job, env_config=dataclasses.replace(job.env_config,
                                                                enable_update=False))
  evaluate = stages.make_evaluator(job, contexts_lib.load_contexts(config, "eval"))
  summary = evaluate(stages.restore_params(job, stages.SFT), "sft_no_update", config.sft.steps)
  job.writer.close()
  return summary
