"""The pretraining, SFT and GRPO stages: resumable step loops that log, evaluate and checkpoint.

Each stage checkpoints into workdir/checkpoints/<stage> with meta {"stage", "stage_step"}
(steps done, which is also the data position: batches and rollout keys are pure functions
of (seed, stage, step)). A stage that finds a complete checkpoint continues after it; the
final step is always saved, so the SFT directory's newest step is the GRPO reference.
Pretraining (`run_pretrain`) is SFT's step on `pretrain_data`'s generated rows, and logs the
lookup probe's accuracy as it goes.

On several processes every process runs the same loops: SFT batches are the same
everywhere; a GRPO batch is assembled from each process's rollout rows (`grpo_batch`,
`steps.grpo_update`), and rollout and evaluation summaries combine every process's
episodes (`distributed.gather_outcomes`), so they equal a one-process run's.
"""

from __future__ import annotations

import functools
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
import tqdm

from atommem_jax import config_lib
from atommem_jax import fileio
from atommem_jax.agent import stats as stats_lib
from atommem_jax.rollout import episode as episode_lib
from atommem_jax.train import batch as batch_lib
from atommem_jax.train import checkpoint as checkpoint_lib
from atommem_jax.train import contexts as contexts_lib
from atommem_jax.train import distributed
from atommem_jax.train import evaluation
from atommem_jax.train import losses
from atommem_jax.train import metrics as metrics_lib
from atommem_jax.train import pretrain_data
from atommem_jax.train import setup
from atommem_jax.train import sft_data
from atommem_jax.train import state as state_lib
from atommem_jax.train import steps as steps_lib
from atommem_jax.train.setup import Job

PRETRAIN, SFT, GRPO = "pretrain", "sft", "grpo"
_STAGE_IDS = {SFT: 1, GRPO: 2, PRETRAIN: 3}  # folded into the stages' keys: never renumber
_ROW_QUANTUM = 16  # GRPO batches are padded to batch.bucket_rows of this many rows (few compiles)
_STATE_KEY_STEP = 2**32 - 1  # folded in for the TrainState's own key (never a step)

Params = dict[str, Any]
Evaluator = Callable[[Params, str, int], dict[str, Any]]


class NonFiniteUpdateError(RuntimeError):
  """A step's loss or gradient was NaN or inf: the update was not applied, the run stops."""


def _stop_if_skipped(job: Job, manager: checkpoint_lib.Checkpointer, metrics, stage: str,
                     step: int) -> None:
  """Raises NonFiniteUpdateError when the step (`steps._apply`) refused its update."""
  if float(metrics["update_skipped"]) == 0:
    return
  job.writer.flush()
  manager.wait_until_finished()
  latest = manager.latest_step()
  kept = (f"the newest checkpoint, step {latest} of {manager.directory}, is kept and a rerun "
          "resumes from it" if latest is not None else f"no checkpoint of {stage} was saved yet")
  raise NonFiniteUpdateError(
      f"{stage} step {step}: loss {float(metrics['loss'])}, grad_norm "
      f"{float(metrics['grad_norm'])}: not finite, so the update was not applied and the run "
      f"stops; {kept}. Lower {stage}.lr or check this step's data")


def stage_key(seed: int, stage: str, step: int) -> jax.Array:
  """The PRNG key of (seed, stage, step): rollouts and shuffles never depend on history."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _STAGE_IDS[stage]), step)


def checkpointer(job: Job, stage: str) -> checkpoint_lib.Checkpointer:
  c = job.config.checkpoint
  return checkpoint_lib.Checkpointer(fileio.join(job.workdir, "checkpoints", stage),
                                     max_to_keep=c.max_to_keep, async_save=c.async_save)


def stage_progress(job: Job, stage: str) -> int:
  """Steps of `stage` already done according to its newest complete checkpoint (0: none)."""
  directory = fileio.join(job.workdir, "checkpoints", stage)
  if not fileio.isdir(directory):
    return 0
  with checkpointer(job, stage) as manager:
    step = manager.latest_step()
  return 0 if step is None else step


def restore_params(job: Job, stage: str) -> Params:
  """Params of the newest complete checkpoint of `stage` (sharded for training)."""
  with checkpointer(job, stage) as manager:
    params, _ = manager.restore_params(state_lib.abstract_params(job.model_config, job.mesh))
  return params


def _start_state(job: Job, stage: str, optimizer, init: Params | jax.Array,
                 manager: checkpoint_lib.Checkpointer) -> tuple[state_lib.TrainState, int]:
  """The stage's state: from its newest checkpoint that restores, else (none saved) fresh from
  `init` (params or key); CheckpointError when there are checkpoints but none restores."""
  if manager.complete_steps():
    target = state_lib.abstract_train_state(job.model_config, optimizer, job.mesh)
    state, meta = manager.restore(target)
    job.log(f"{stage}: resuming after step {meta['stage_step']} from {manager.directory}")
    return state, int(meta["stage_step"])
  rng = None if isinstance(init, jax.Array) else stage_key(job.config.seed, stage, _STATE_KEY_STEP)
  return state_lib.create_train_state(job.model_config, init, optimizer, job.mesh, rng=rng,
                                      donate_params=True), 0


def _save(job: Job, manager: checkpoint_lib.Checkpointer, state, stage: str, step: int,
          force: bool = False) -> None:
  """Starts the checkpoint of `step` and writes out the metrics logged so far (on a URL
  workdir they are otherwise uploaded at most every 30 s)."""
  manager.save(state, {"stage": stage, "stage_step": step}, step=step, force=force)
  job.writer.flush()


def _row_multiple(job: Job, section) -> int:
  """Rows a batch of the stage is padded to a multiple of: whole micro-batches (SFT:
  sft.grad_accum of them; GRPO: grpo.micro_batch_rows rows per batch shard) of every
  mini-batch, on every batch shard."""
  shards = steps_lib.batch_shards(job.mesh)
  if "micro_batch_rows" in section:
    return shards * max(1, section.micro_batch_rows) * section.num_minibatches
  return shards * section.grad_accum


def train_buckets(job: Job) -> tuple[int, ...]:
  r = job.config.rollout
  return tuple(b + r.max_new_tokens for b in r.prompt_buckets)


def sft_examples(job: Job, contexts) -> list[batch_lib.Example]:
  """Oracle trajectories of the training contexts (or data.sft_file when set), then the
  repeat-the-text examples of sft.copy_examples_per_context, if any."""
  c = job.config.sft
  if job.config.data.sft_file:
    examples = sft_data.file_examples(job.config.data.sft_file, job.tokenizer)
  else:
    examples, reward = sft_data.oracle_examples(
        contexts, job.env_config, job.tokenizer, job.embedder,
        oracle_options=config_lib.oracle_options(job.config), decoy_share=c.oracle_decoy_share)
    job.log(f"sft: {len(examples)} oracle steps from {len(contexts)} contexts "
            f"(oracle reward {reward:.3f})")
  copies = sft_data.copy_examples(
      contexts, job.tokenizer, c.copy_span_tokens,
      seeds=[job.config.seed * 1000 + repeat for repeat in range(c.copy_examples_per_context)])
  if copies:
    job.log(f"sft: {len(copies)} repeat-the-text examples of {c.copy_span_tokens} tokens "
            "mixed in")
  return examples + copies


def _sft_batch(job: Job, examples, step: int) -> batch_lib.TrainBatch:
  c = job.config.sft
  picked = [examples[i] for i in sft_data.sft_batch_indices(len(examples), c.batch_size,
                                                            job.config.seed, step)]
  if c.packing:
    return batch_lib.pack_examples(picked, length=c.max_len, pad_id=job.pad_id,
                                   row_multiple=_row_multiple(job, c))
  return batch_lib.pad_examples(picked, buckets=train_buckets(job), pad_id=job.pad_id,
                                num_rows=c.batch_size, row_multiple=_row_multiple(job, c))


def _progress(stage: str, start: int, total: int):
  return tqdm.tqdm(range(start, total), initial=start, total=total, desc=stage, unit="step",
                   file=sys.stderr, disable=jax.process_index() != 0, dynamic_ncols=True)


def _maybe_evaluate(job: Job, evaluate: Evaluator, params: Params, stage: str, step: int,
                    total: int, offset: int) -> None:
  """The periodic evaluation after `step` of `stage`: named by the stage's step, logged at the
  run's step (offset + step, the x axis of the stage's training metrics)."""
  every = setup.every_steps(job.config, stage, "eval")
  if every and step % every == 0 and step < total:
    evaluate(params, f"{stage}_step{step}", offset + step)


def _supervised_stage(job: Job, stage: str, train_step, optimizer, init: Params | jax.Array,
                      batch_at: Callable[[int], batch_lib.TrainBatch], offset: int,
                      evaluate: Evaluator | None,
                      step_metrics: Callable[[Any, dict, int], dict[str, Any]] | None = None
                      ) -> Params:
  """The step loop of a stage trained on host batches (SFT, pretraining): resume from the
  stage's checkpoint, `train_step` on `batch_at(step)` for {stage}.steps steps, metrics
  (plus `step_metrics(state, metrics, steps_done)`) written under "{stage}/" at offset + steps done,
  the non-finite stop, checkpoints and periodic evaluations; returns the final params."""
  total = job.config[stage].steps
  timer = metrics_lib.StepTimer()
  with checkpointer(job, stage) as manager:
    state, start = _start_state(job, stage, optimizer, init, manager)
    for step in _progress(stage, start, total):
      batch = batch_at(step)
      timer.start()
      state, metrics = train_step(state, batch)
      timing = timer.stop(float(np.sum(batch.segment_ids > 0)), metrics)
      done = step + 1
      if step_metrics is not None:
        metrics = {**metrics, **step_metrics(state, metrics, done)}
      job.writer.write(offset + done, {**metrics, **timing}, prefix=f"{stage}/")
      _stop_if_skipped(job, manager, metrics, stage, done)
      if done % setup.every_steps(job.config, stage, "checkpoint") == 0 or done == total:
        _save(job, manager, state, stage, done, force=done == total)
      if evaluate is not None:
        _maybe_evaluate(job, evaluate, state.params, stage, done, total, offset)
  return state.params


def run_sft(job: Job, init: Params | jax.Array, examples, offset: int,
            evaluate: Evaluator) -> Params:
  """SFT on `examples` for sft.steps steps; returns the final params."""
  c = job.config.sft
  optimizer = state_lib.make_optimizer(config_lib.optimizer_config(job.config, SFT))
  sft_step = steps_lib.make_sft_step(job.model_config, optimizer, job.mesh,
                                     grad_accum_steps=c.grad_accum,
                                     prompt_loss_weight=c.prompt_loss_weight,
                                     loss_chunk=c.loss_chunk)
  return _supervised_stage(job, SFT, sft_step, optimizer, init,
                           lambda step: _sft_batch(job, examples, step), offset, evaluate)


def _pretrain_corpus(job: Job, contexts) -> tuple[pretrain_data.Corpus,
                                                   dict[str, batch_lib.TrainBatch]]:
  """The tokenized corpus of the pretraining rows, and the probe batches by metric name: the
  lookup probe's when probe_every_steps, and the reading probe's too when qa rows are drawn
  from synthetic contexts (held-out contexts of the same world)."""
  c = job.config.pretrain
  tasks = config_lib.pretrain_tasks(c.tasks)
  from_contexts = set(tasks) - {"recall"}
  if from_contexts and not contexts:
    raise config_lib.ConfigError(
        f"config field pretrain.tasks={c.tasks!r}: {', '.join(sorted(from_contexts))} rows are "
        "cut from the training contexts, but there are none; give training data or keep recall "
        "only")
  try:
    corpus = pretrain_data.make_corpus(job.tokenizer, contexts if from_contexts else (),
                                       recall="recall" in tasks or c.probe_every_steps > 0,
                                       facts="facts" in tasks)
  except ValueError as e:  # a name of the pool is not one token
    raise config_lib.ConfigError(f"config field tokenizer={job.config.tokenizer!r}: {e}") from e
  probes = {}
  if c.probe_every_steps:
    probes["probe_accuracy"] = pretrain_data.probe_batch(job.tokenizer)
    if "qa" in tasks and job.config.data.kind == "synthetic":
      probes["reading_accuracy"] = pretrain_data.qa_probe_batch(
          job.tokenizer, job.config.data.synthetic, max_len=c.max_len)
    if "facts" in tasks and job.config.data.kind == "synthetic":
      probes["restating_accuracy"] = pretrain_data.facts_probe_batch(
          job.tokenizer, job.config.data.synthetic, max_len=c.max_len)
  return corpus, probes


def run_pretrain(job: Job, init: Params | jax.Array, contexts, offset: int,
                 evaluate: Evaluator | None = None) -> Params:
  """Pretraining on generated rows (`pretrain_data`) for pretrain.steps steps from `init`
  (params or a key); returns the final params. Every pretrain.probe_every_steps (and at the
  last step) the lookup probe's accuracy is logged and written as pretrain/probe_accuracy,
  and, when qa rows are drawn from synthetic contexts, the reading probe's as
  pretrain/reading_accuracy.
  The corpus is tokenized only when a step is left to run."""
  c = job.config.pretrain
  optimizer = state_lib.make_optimizer(config_lib.optimizer_config(job.config, PRETRAIN))
  pretrain_step = steps_lib.make_sft_step(job.model_config, optimizer, job.mesh,
                                          prompt_loss_weight=0.0, loss_chunk=c.loss_chunk)
  corpus_and_probe = functools.cache(lambda: _pretrain_corpus(job, contexts))
  started = time.perf_counter()

  def batch_at(step: int) -> batch_lib.TrainBatch:
    return pretrain_data.pretrain_batch(c, corpus_and_probe()[0], job.config.seed, step,
                                        pad_id=job.pad_id,
                                        row_multiple=steps_lib.batch_shards(job.mesh))

  def probe_metrics(state, metrics, done: int) -> dict[str, float]:
    probes = corpus_and_probe()[1]
    if not probes or (done % c.probe_every_steps and done != c.steps):
      return {}
    accuracies = {name: pretrain_data.probe_accuracy(job.model_config, state.params, probe)
                  for name, probe in probes.items()}
    shown = ", ".join(f"{name.replace('_accuracy', '')} accuracy {value:.3f}"
                      for name, value in accuracies.items())
    job.log(f"pretrain step {done}: loss {float(metrics['loss']):.3f}, {shown} "
            f"({time.perf_counter() - started:.0f}s)")
    return accuracies

  return _supervised_stage(job, PRETRAIN, pretrain_step, optimizer, init, batch_at, offset,
                           evaluate, probe_metrics)


def _rollout_metrics(rollout: episode_lib.Rollout) -> dict[str, float]:
  outcomes = distributed.gather_outcomes(rollout.episodes)
  results = [outcome.result for outcome in outcomes]
  usage = stats_lib.summarize([r.stats for r in results])
  response_lengths = [length for outcome in outcomes for length in outcome.response_lengths]
  exact_match = [em for r in results for em in r.exact_match]
  return {"reward_mean": float(rollout.rewards.mean()), "reward_std": float(rollout.rewards.std()),
          "mixed_groups": losses.mixed_group_share(rollout.rewards),
          "exact_match": float(np.mean(exact_match)), "creates": usage["creates"],
          "reads": usage["reads"], "updates": usage["updates"], "deletes": usage["deletes"],
          "store_size": usage["final_store_size"], "invalid": usage["num_invalid"],
          "response_length": float(np.mean(response_lengths)), "turns": usage["steps"],
          "rollout_s": rollout.seconds}


def grpo_batch(job: Job, rollout: episode_lib.Rollout) -> batch_lib.TrainBatch:
  """This process's rows: every turn of its episodes, carrying the episode's group advantage.

  Advantages come from the global rewards. Every process pads its rows (zero-weight rows)
  to the same count and length, the largest any process needs, so that their rows form one
  batch (`steps.grpo_update`); on one process these are the whole batch.
  """
  g = job.config.grpo
  advantages = np.asarray(losses.group_advantages(rollout.rewards,
                                                  normalize_std=g.normalize_std))
  examples = [example for e in rollout.episodes
              for example in e.examples(float(advantages.flat[e.episode]))]
  share = jax.process_count()  # every process holds as many batch shards (local_batch_shards)
  multiple = _row_multiple(job, g)
  quantum = multiple * max(1, _ROW_QUANTUM // multiple) // share
  needed = (batch_lib.bucket_rows(len(examples), quantum),
            max((len(e.prompt_ids) + len(e.response_ids) for e in examples), default=1))
  rows, longest = np.max(distributed.allgather_objects(needed), axis=0)
  return batch_lib.pad_examples(examples, length=batch_lib.bucket_length(longest,
                                                                         train_buckets(job)),
                                pad_id=job.pad_id, num_rows=int(rows),
                                row_multiple=multiple // share)


def _grpo_rollout(job: Job, loop: episode_lib.EpisodeLoop, params: Params, contexts,
                  step: int, rng: jax.Array
                  ) -> tuple[episode_lib.Rollout, episode_lib.Rollout]:
  """(the groups GRPO step `step` trains on, every group it drew).

  One draw of grpo.questions_per_batch contexts, or with grpo.max_draws > 1 DAPO's dynamic
  sampling: further draws while fewer groups than that have differing rewards; the batch
  takes those groups first, then the others in draw order. Every draw is a pure function of
  (seed, step, draw), so a resumed run draws the same.
  """
  g = job.config.grpo
  rollouts, mixed, uniform = [], [], []
  for draw in range(g.max_draws):
    picked = contexts_lib.grpo_context_indices(len(contexts), g.questions_per_batch,
                                               job.config.seed, step, draw)
    rollout = loop.run(params, [contexts[i] for i in picked],
                       jax.random.fold_in(rng, draw) if draw else rng, group_size=g.group_size)
    rollouts.append(rollout)
    for group, differs in enumerate(losses.differing_groups(rollout.rewards)):
      (mixed if differs else uniform).append((draw, group))
    if len(mixed) >= g.questions_per_batch:
      break
  if len(rollouts) == 1:
    return rollouts[0], rollouts[0]
  drawn = episode_lib.select_groups(rollouts, [(r, b) for r, rollout in enumerate(rollouts)
                                               for b in range(len(rollout.rewards))])
  return (episode_lib.select_groups(rollouts, (mixed + uniform)[:g.questions_per_batch]),
          drawn)


def make_rollout_loop(job: Job, batch_size: int, greedy: bool, env_config=None
                      ) -> episode_lib.EpisodeLoop:
  sampling = config_lib.sampling_config(job.config, eos_ids=job.eos_ids, pad_id=job.pad_id,
                                        greedy=greedy)
  return episode_lib.EpisodeLoop(
      job.rollout_config, job.tokenizer, env_config or job.env_config, job.embedder,
      batch_size=batch_size, prompt_buckets=tuple(job.config.rollout.prompt_buckets),
      sampling=sampling, mesh=job.mesh)


def rollout_params(job: Job, params: Params) -> Params:
  dtype = job.rollout_config.jnp_param_dtype
  return jax.tree.map(lambda x: x.astype(dtype), params)


def run_grpo(job: Job, init: Params, reference: Params, contexts, offset: int,
             evaluate: Evaluator) -> Params:
  """GRPO from `init` with KL to `reference` for grpo.steps steps; returns the final params."""
  g = job.config.grpo
  optimizer = state_lib.make_optimizer(config_lib.optimizer_config(job.config, GRPO))
  grpo_config = config_lib.grpo_config(job.config)
  distributed.local_batch_shards(job.mesh)  # rollout rows can train where they were made
  # A row is one turn: at most rollout.max_new_tokens trained tokens go through the lm head.
  split = dict(micro_batch_rows=g.micro_batch_rows, loss_chunk=g.loss_chunk,
               max_targets_per_row=job.config.rollout.max_new_tokens)
  grpo_step = steps_lib.make_grpo_step(job.model_config, optimizer, grpo_config, job.mesh,
                                       **split)
  old_logprobs_fn = None
  if g.old_logprobs == "recompute":
    old_logprobs_fn = steps_lib.make_logprobs_fn(
        job.model_config, job.mesh, temperature=grpo_config.temperature, **split)
  loop = make_rollout_loop(job, g.questions_per_batch * g.group_size, greedy=False)
  timer = metrics_lib.StepTimer()
  with checkpointer(job, GRPO) as manager:
    state, start = _start_state(job, GRPO, optimizer, init, manager)
    for step in _progress(GRPO, start, g.steps):
      key = stage_key(job.config.seed, GRPO, step)
      rollout_key, shuffle_key = jax.random.split(key)
      timer.start()
      rollout, drawn = _grpo_rollout(job, loop, rollout_params(job, state.params), contexts,
                                     step, rollout_key)
      batch = grpo_batch(job, rollout)
      state, update = steps_lib.grpo_update(grpo_step, state, reference, batch,
                                            num_minibatches=g.num_minibatches,
                                            epochs=g.epochs, rng=shuffle_key, mesh=job.mesh,
                                            old_logprobs_fn=old_logprobs_fn)
      tokens = sum(distributed.allgather_objects(int(np.sum(batch.segment_ids > 0))))
      timing = timer.stop(float(tokens), state.step)
      draws = {"draws": len(drawn.rewards) / g.questions_per_batch}
      job.writer.write(offset + step + 1,
                       {**update, **_rollout_metrics(drawn), **draws, **timing},
                       prefix="grpo/")
      _stop_if_skipped(job, manager, update, GRPO, step + 1)
      if (step + 1) % setup.every_steps(job.config, GRPO, "checkpoint") == 0 or step + 1 == g.steps:
        _save(job, manager, state, GRPO, step + 1, force=step + 1 == g.steps)
      _maybe_evaluate(job, evaluate, state.params, GRPO, step + 1, g.steps, offset)
  return state.params


def make_evaluator(job: Job, contexts) -> Evaluator:
  """evaluate(params, name, step) -> summary: `evaluation.evaluate` of the held-out contexts
  (greedy, seeded by config.seed), logged as eval/NAME/* at the run's `step`."""
  loop = evaluation.evaluation_loop(job.config, job.rollout_config, job.tokenizer,
                                    job.env_config, job.embedder, job.mesh)

  def evaluate(params: Params, name: str, step: int) -> dict[str, Any]:
    summary = evaluation.evaluate(loop, params, contexts, seed=job.config.seed).summary
    job.writer.write(step, {field: value for field, value in summary.items()
                            if value is not None}, prefix=f"eval/{name}/")
    job.log(f"eval {name}: EM {summary['exact_match']:.3f} F1 {summary['f1']:.3f}, answer in "
            f"store {summary['answer_in_store']:.3f} "
            f"(creates {summary['creates']:.2f}, updates {summary['updates']:.2f}, "
            f"invalid {summary['num_invalid']:.2f} per episode; {summary['seconds']:.0f}s)")
    return summary

  return evaluate
