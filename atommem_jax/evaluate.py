r"""Greedy evaluation of a policy on long-context QA files: EM/F1, operation usage, logs.

  python -m atommem_jax.evaluate --config configs/tiny.py \
      [--checkpoint RUN_DIR | --hf_dir HF_DIR] --data FILE [--data FILE ...] \
      [--out DIR] [--limit N] [--policy model|oracle|memagent] [--config.eval.batch_size=8]

--data takes LongContext files (.jsonl / .parquet from `python -m atommem_jax.data.build`) or
the word "synthetic" (config.data.synthetic, eval_contexts contexts from seed config.seed + 1).
The model policy comes from --checkpoint (a training run's workdir or one of its orbax
directories: the newest complete step, GRPO before SFT; the model config and tokenizer the
run recorded in its workdir win over the config file's), --hf_dir (a Hugging Face directory;
also config.model.hf_dir), or, with neither, a random init of config.model.preset. "oracle"
and "memagent" are the scripted teachers of `agent.oracle` run through the same jitted
episode loop: an upper bound and a workflow baseline.

The episodes run through `train.evaluation.evaluate`, the function (seeding and summary
layout) of the training run's evaluations: on a run's checkpoint and held-out contexts this
CLI's row equals the run's row in evaluations.json (answer_retrieved aside: only this CLI
traces the reads). Writes to --out: summary.json (per dataset that row: EM, F1, reward,
answer recall, documents per context, operation usage), summary.png (EM/F1 and operations
per dataset) and episodes.md (every step of every episode: what the agent saw, its response,
the parsed actions and the store after the step). JAX and the data libraries are imported
only after the flags are checked, so a bad flag is reported at once. `run` does the work
from values (no flags). Single host: the episode log holds the episodes that ran here.
"""

from __future__ import annotations

import io
import json
import os
from typing import Sequence

from absl import app
from absl import flags
from ml_collections import config_flags

from atommem_jax import cli
from atommem_jax import fileio

FLAGS = flags.FLAGS
PROG = "atommem_jax.evaluate"


def define_flags() -> None:
  """The CLI's flags: defined when it runs, not on import (tests import every CLI module
  into one process, and two modules defining --config would clash)."""
  config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py)")
  flags.DEFINE_string("checkpoint", None, "training run directory (orbax checkpoints)")
  flags.DEFINE_string("hf_dir", None, "Hugging Face Qwen3 checkpoint directory")
  flags.DEFINE_multi_string("data", None, "LongContext .jsonl/.parquet file, or 'synthetic'")
  flags.DEFINE_string("out", "eval", "output directory")
  flags.DEFINE_integer("limit", None, "evaluate the first N contexts of each file")
  flags.DEFINE_enum("policy", "model", ["model", "oracle", "memagent"],
                    "the trained model (greedy) or a scripted teacher")


SYNTHETIC = "synthetic"
_SHOWN_CHARS = 400  # chunk and memory texts are cut to this in episodes.md


def _check_flags() -> None:
  if FLAGS.checkpoint and FLAGS.hf_dir:
    raise app.UsageError("give either --checkpoint (a training run) or --hf_dir (a Hugging "
                         "Face directory), not both")
  if not FLAGS.data:
    raise app.UsageError("--data is required: a LongContext file or 'synthetic' (repeatable)")
  for path in FLAGS.data:
    if path != SYNTHETIC and not fileio.isfile(path):
      raise app.UsageError(f"--data {path}: no such file; build one with `python -m "
                           "atommem_jax.data.build` or pass 'synthetic'")
  for name, path in (("checkpoint", FLAGS.checkpoint), ("hf_dir", FLAGS.hf_dir)):
    if path and not fileio.isdir(path):
      raise app.UsageError(f"--{name} {path}: no such directory")
  if FLAGS.limit is not None and FLAGS.limit < 1:
    raise app.UsageError(f"--limit {FLAGS.limit}: must be >= 1")


def load_contexts(config, path: str, limit: int | None = None):
  """The LongContexts of a file, or of 'synthetic' (training's held-out contexts); the first
  `limit` of them when given."""
  from atommem_jax.data import multihop  # pylint: disable=g-import-not-at-top
  from atommem_jax.train import contexts as contexts_lib  # pylint: disable=g-import-not-at-top
  if path != SYNTHETIC:
    try:
      contexts = multihop.load_long_contexts(path)
    except multihop.DataError as e:
      raise app.UsageError(f"--data {e}") from e
  else:
    if config.data.synthetic.eval_contexts < 1:
      raise app.UsageError("--data synthetic needs config.data.synthetic.eval_contexts >= 1")
    try:
      contexts = contexts_lib.synthetic_contexts(config, "eval")
    except ValueError as e:
      raise app.UsageError(f"config section data.synthetic: {e}") from e
  return contexts[:limit] if limit else contexts


def restore_params(directory: str, model_config, mesh):
  """Params of the newest step of a training run that restores, in `model_config`'s dtypes
  (CheckpointError naming each step and what is wrong when none does)."""
  from atommem_jax.train import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from atommem_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  with checkpoint_lib.Checkpointer(directory) as manager:
    step = manager.latest_step()
    params, _ = manager.restore_params(state_lib.abstract_params(model_config, mesh), step=step)
  print(f"restored params of step {step} from {directory}")
  return params


def load_model(config, mesh, tokenizer, *, hf_dir: str | None, checkpoint_dir: str | None,
               trained):
  """(model config, params) from `hf_dir`, a run's orbax `checkpoint_dir`, or random init.

  With a checkpoint, `trained` is the run's recorded model config (`run_files.trained_model`),
  used over the config file's when there is one.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from atommem_jax import config_lib  # pylint: disable=g-import-not-at-top
  from atommem_jax.model import hf  # pylint: disable=g-import-not-at-top
  from atommem_jax.model import qwen3  # pylint: disable=g-import-not-at-top
  if hf_dir:
    try:  # a missing or malformed config.json or weight file, named in the message
      model_config, params = hf.load_hf(
          hf_dir, config.model.rollout_dtype, mesh=mesh,
          config_overrides=config_lib.execution_fields(config, rollout=True))
    except (OSError, ValueError) as e:
      raise app.UsageError(f"model directory {hf_dir}: {e}") from e
  elif checkpoint_dir is not None:
    model_config = (trained[0].replace(**config_lib.execution_fields(config, rollout=True))
                    if trained is not None else config_lib.model_config(config, rollout=True))
    params = restore_params(checkpoint_dir, model_config, mesh)
  else:
    model_config = config_lib.model_config(config, rollout=True)
    print(f"no --checkpoint or --hf_dir: random init of preset {config.model.preset!r}")
    params = qwen3.init_params(model_config, jax.random.key(config.seed), mesh)
  if len(tokenizer) > model_config.vocab_size:
    raise app.UsageError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size "
                         f"is {model_config.vocab_size}; use the tokenizer the model was "
                         "trained with (config field tokenizer)")
  return model_config, params


def scripted_policy(policy: str, config, tokenizer):
  """The policy factory of a scripted teacher ("oracle", "memagent"); None for "model"."""
  from atommem_jax import config_lib  # pylint: disable=g-import-not-at-top
  from atommem_jax.agent import oracle  # pylint: disable=g-import-not-at-top
  options = config_lib.oracle_options(config)
  enabled = config_lib.env_config(config).enabled_actions
  return {"oracle": lambda: oracle.OraclePolicy(enabled=enabled, **options),
          "memagent": lambda: oracle.MemAgentPolicy(tokenizer,
                                                    boxed_space=options["boxed_space"]),
          }.get(policy)


def run(config, data: Sequence[str], out: str, *, checkpoint: str | None = None,
        hf_dir: str | None = None, limit: int | None = None, policy: str = "model") -> dict:
  """Evaluates `policy` on every `data` file (or 'synthetic'); writes summary.json,
  summary.png and episodes.md to `out`; returns the summary."""
  from atommem_jax import config_lib  # pylint: disable=g-import-not-at-top
  from atommem_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from atommem_jax.memory import embed  # pylint: disable=g-import-not-at-top
  from atommem_jax.train import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from atommem_jax.train import evaluation  # pylint: disable=g-import-not-at-top
  from atommem_jax.train import run_files  # pylint: disable=g-import-not-at-top
  mesh = config_lib.make_mesh(config)
  checkpoint_dir, trained = None, None
  if checkpoint:
    checkpoint_dir, workdir = run_files.find_checkpoints(checkpoint)
    trained = run_files.trained_model(workdir)
    if policy == "model":  # said first: the run's tokenizer is looked for next
      with checkpoint_lib.Checkpointer(checkpoint_dir) as manager:
        if not manager.complete_steps():
          raise app.UsageError(f"--checkpoint {checkpoint}: no complete checkpoint step under "
                               f"{checkpoint_dir}; give a training run's workdir or one of "
                               "its checkpoint directories")
  hf_dir = hf_dir or (None if checkpoint else config.model.hf_dir or None)
  try:  # the tokenizer the run recorded, else the model directory's, else the config's
    tokenizer_dir = (trained[1] if trained is not None else
                     tokenizer_lib.resolve_tokenizer_dir(config.tokenizer, hf_dir or checkpoint))
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  tokenizer = tokenizer_lib.load_tokenizer(tokenizer_dir)
  model_config, params = (load_model(config, mesh, tokenizer, hf_dir=hf_dir,
                                     checkpoint_dir=checkpoint_dir, trained=trained)
                          if policy == "model" else (None, None))
  loop = evaluation.evaluation_loop(config, model_config, tokenizer,
                                    config_lib.env_config(config),
                                    embed.make_embedder(config.embedder), mesh,
                                    make_policy=scripted_policy(policy, config, tokenizer),
                                    trace=True)
  fileio.makedirs(out)
  summary = {"policy": policy,
             "weights": checkpoint or hf_dir or f"random init of {config.model.preset}",
             "tokenizer": tokenizer_dir, "embedder": config.embedder,
             "mesh": dict(mesh.shape), "datasets": {}}
  log = [f"# Episodes of policy {policy!r}", ""]
  for path in data:
    name = SYNTHETIC if path == SYNTHETIC else os.path.splitext(os.path.basename(path))[0]
    result = evaluation.evaluate(loop, params, load_contexts(config, path, limit),
                                 seed=config.seed, progress=f"evaluating {name}")
    summary["datasets"][name] = row = result.summary
    for context, rollout in result.episodes:
      log += episode_log(name, context, rollout)
    print(f"{name}: {row['contexts']} contexts, {row['questions']} questions, "
          f"{row['documents_per_context']:.0f} documents per context: "
          f"EM {row['exact_match']:.3f} F1 {row['f1']:.3f}; answer in store "
          f"{row['answer_in_store']:.3f}, retrieved {row['answer_retrieved'] or 0:.3f}")
  fileio.write_text(fileio.join(out, "summary.json"), json.dumps(summary, indent=2))
  write_plot(summary, fileio.join(out, "summary.png"))
  fileio.write_text(fileio.join(out, "episodes.md"), "\n".join(log) + "\n")
  print(f"wrote summary.json, summary.png and episodes.md to {out}")
  return summary


_PLOTTED_OPERATIONS = ("creates", "reads", "updates", "deletes", "num_invalid",
                       "final_store_size")


def write_plot(summary: dict, path: str) -> None:
  """EM / F1 per dataset, and operations per episode per dataset, side by side."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  names = list(summary["datasets"])
  figure, (scores, operations) = plt.subplots(1, 2, figsize=(12, 4.5))
  x = np.arange(len(names))
  for i, metric in enumerate(("exact_match", "f1")):
    scores.bar(x + (i - 0.5) * 0.4, [summary["datasets"][n][metric] for n in names], 0.4,
               label=metric)
  scores.set(xticks=x, xticklabels=names, ylim=(0, 1), ylabel="mean over questions",
             title=f"{summary['policy']}: answer quality")
  scores.legend()
  width = 0.8 / len(_PLOTTED_OPERATIONS)
  for i, operation in enumerate(_PLOTTED_OPERATIONS):
    values = [summary["datasets"][n].get(operation, 0.0) for n in names]
    operations.bar(x + (i - len(_PLOTTED_OPERATIONS) / 2 + 0.5) * width, values, width,
                   label=operation)
  operations.set(xticks=x, xticklabels=names, ylabel="per episode",
                 title="memory operations")
  operations.legend(fontsize="small")
  figure.tight_layout()
  image = io.BytesIO()
  figure.savefig(image, format="png", dpi=100)
  fileio.write_bytes(path, image.getvalue())
  plt.close(figure)


def _cut(text: str, limit: int = _SHOWN_CHARS) -> str:
  text = text.strip()
  return text if len(text) <= limit else text[:limit] + f" [... {len(text) - limit} more chars]"


def _quote(text: str) -> str:
  return "\n".join("    " + line for line in (text or "(empty)").splitlines() or [""])


def _describe_action(action) -> str:
  where = f" Memory {action.memory_index}" if action.memory_index is not None else ""
  return f"{action.kind.name}{where}: {_cut(action.text)}" if action.text else \
      f"{action.kind.name}{where}"


def episode_log(name: str, context, rollout) -> list[str]:
  """Markdown lines of one episode: its answers, then every step."""
  result = rollout.result
  lines = [f"## {name} · {context.id} (episode {rollout.episode})", "",
           f"reward {result.reward:.3f}; {len(result.trajectory)} steps; "
           f"{len(result.memories)} memories at the end", ""]
  for question, answer, em, f1 in zip(context.questions, result.answers, result.exact_match,
                                      result.f1):
    lines.append(f"- Q: {question.question} | gold: {question.answers[0]!r} | answer: "
                 f"{answer!r} | EM {em:.0f} F1 {f1:.2f}")
  lines.append("")
  for turn, observation, memories in zip(result.trajectory, rollout.observations,
                                         rollout.memories):
    where = (f"chunk {observation.chunk_index + 1}/{observation.num_chunks}"
             if observation.chunk_index is not None
             else f"question {observation.question_index + 1}")
    lines += [f"### step {turn.step} · {turn.phase} · {where} · "
              f"{len(turn.prompt_token_ids)} prompt tokens", "",
              "scratchpad:", _quote(observation.scratchpad),
              f"query: {observation.query or '(none)'}", "retrieved:"]
    lines += [f"    Memory {i}: {_cut(m.text)}" for i, m in enumerate(observation.retrieved, 1)
              ] or ["    (none)"]
    if observation.chunk_text:
      lines += ["chunk:", _quote(_cut(observation.chunk_text))]
    lines += ["response:", _quote(turn.response), "actions:"]
    lines += [f"    {_describe_action(a)}" for a in turn.actions] or ["    (none)"]
    if turn.problems:
      lines += ["invalid:"] + [f"    {p.kind}: {p.detail}" for p in turn.problems]
    lines += [f"store after the step ({len(memories)} entries):"]
    lines += [f"    [{m.id}] {_cut(m.text)}" for m in memories]
    lines.append("")
  return lines


def main(argv: Sequence[str]) -> None:
  del argv  # cli.run refuses positional arguments
  config = cli.load_config(PROG)
  _check_flags()
  run(config, FLAGS.data, FLAGS.out, checkpoint=FLAGS.checkpoint, hf_dir=FLAGS.hf_dir,
      limit=FLAGS.limit, policy=FLAGS.policy)


if __name__ == "__main__":
  define_flags()
  cli.run(main, PROG)
