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

Writes to --out: summary.json (per dataset: EM, F1, reward, documents per context,
operation usage), summary.png (EM/F1 and operations per dataset) and episodes.md (every
step of every episode: what the agent saw, its response, the parsed actions and the store
after the step). JAX and the data libraries are imported only after the flags are checked,
so a bad flag is reported at once. Single host: episodes are summarised where they ran.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import sys
from typing import Sequence

from absl import app
from absl import flags
from ml_collections import config_flags

from atommem_jax import fileio

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py)")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "training run directory (orbax checkpoints)")
_HF_DIR = flags.DEFINE_string("hf_dir", None, "Hugging Face Qwen3 checkpoint directory")
_DATA = flags.DEFINE_multi_string("data", None, "LongContext .jsonl/.parquet file, or 'synthetic'")
_OUT = flags.DEFINE_string("out", "eval", "output directory")
_LIMIT = flags.DEFINE_integer("limit", None, "evaluate the first N contexts of each file")
_POLICY = flags.DEFINE_enum("policy", "model", ["model", "oracle", "memagent"],
                            "the trained model (greedy) or a scripted teacher")

SYNTHETIC = "synthetic"
_SHOWN_CHARS = 400  # chunk and memory texts are cut to this in episodes.md


def _check_flags() -> None:
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config configs/tiny.py")
  if _CHECKPOINT.value and _HF_DIR.value:
    raise app.UsageError("give either --checkpoint (a training run) or --hf_dir (a Hugging "
                         "Face directory), not both")
  if not _DATA.value:
    raise app.UsageError("--data is required: a LongContext file or 'synthetic' (repeatable)")
  for path in _DATA.value:
    if path != SYNTHETIC and not fileio.isfile(path):
      raise app.UsageError(f"--data {path}: no such file; build one with `python -m "
                           "atommem_jax.data.build` or pass 'synthetic'")
  for name, path in (("checkpoint", _CHECKPOINT.value), ("hf_dir", _HF_DIR.value)):
    if path and not fileio.isdir(path):
      raise app.UsageError(f"--{name} {path}: no such directory")
  if _LIMIT.value is not None and _LIMIT.value < 1:
    raise app.UsageError(f"--limit {_LIMIT.value}: must be >= 1")


def _load_tokenizer(config, model_dir: str | None):
  """The config's tokenizer: "qwen3", a directory, or "synthetic" (saved with the model)."""
  from atommem_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  name = config.tokenizer
  if name == "qwen3":
    return tokenizer_lib.load_tokenizer()
  if name == SYNTHETIC:
    if model_dir and fileio.isfile(fileio.join(model_dir, "tokenizer_config.json")):
      return tokenizer_lib.load_tokenizer(model_dir)
    raise app.UsageError("config tokenizer='synthetic' is trained with the model; pass "
                         "--hf_dir/--checkpoint of a directory holding its tokenizer files, or "
                         "--config.tokenizer=qwen3 / a tokenizer directory")
  if not fileio.isdir(name):
    raise app.UsageError(f"config field tokenizer={name!r}: not 'qwen3', 'synthetic' or an "
                         "existing tokenizer directory")
  return tokenizer_lib.load_tokenizer(name)


def _load_contexts(config, path: str):
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
    try:  # the held-out contexts of training's evaluations
      contexts = contexts_lib.synthetic_contexts(config, "eval")
    except ValueError as e:
      raise app.UsageError(f"config section data.synthetic: {e}") from e
  return contexts[:_LIMIT.value] if _LIMIT.value else contexts


def _restore_params(directory: str, model_config, mesh):
  """Params of the newest complete step of a training run, cast to the rollout dtype."""
  from atommem_jax.train import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from atommem_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  with checkpoint_lib.Checkpointer(directory) as manager:
    step = manager.latest_step()
    if step is None:
      raise app.UsageError(f"--checkpoint {directory}: no complete checkpoint step in it")
    params, _ = manager.restore_params(state_lib.abstract_params(model_config, mesh), step=step)
  print(f"restored params of step {step} from {directory}")
  return params


def _load_model(config, mesh, tokenizer, checkpoint_dir: str | None, trained):
  """(model config, params) from --checkpoint, --hf_dir / model.hf_dir, or random init.

  With --checkpoint, `checkpoint_dir` is its orbax directory and `trained` the run's recorded
  model config (`run_files.trained_model`), used over the config file's when there is one.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from atommem_jax import config_lib  # pylint: disable=g-import-not-at-top
  from atommem_jax.model import hf  # pylint: disable=g-import-not-at-top
  from atommem_jax.model import qwen3  # pylint: disable=g-import-not-at-top
  hf_dir = _HF_DIR.value or (None if _CHECKPOINT.value else config.model.hf_dir or None)
  if hf_dir:
    model_config, params = hf.load_hf(
        hf_dir, config.model.rollout_dtype, mesh=mesh,
        config_overrides=config_lib.execution_fields(config, rollout=True))
  elif checkpoint_dir is not None:
    model_config = (trained[0].replace(**config_lib.execution_fields(config, rollout=True))
                    if trained is not None else config_lib.model_config(config, rollout=True))
    params = _restore_params(checkpoint_dir, model_config, mesh)
  else:
    model_config = config_lib.model_config(config, rollout=True)
    print(f"no --checkpoint or --hf_dir: random init of preset {config.model.preset!r}")
    params = qwen3.init_params(model_config, jax.random.key(config.seed), mesh)
  if len(tokenizer) > model_config.vocab_size:
    raise app.UsageError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size "
                         f"is {model_config.vocab_size}; use the tokenizer the model was "
                         "trained with (config field tokenizer)")
  return model_config, params


def _make_loop(config, tokenizer, model_config, mesh):
  from atommem_jax import config_lib  # pylint: disable=g-import-not-at-top
  from atommem_jax.agent import oracle  # pylint: disable=g-import-not-at-top
  from atommem_jax.memory import embed  # pylint: disable=g-import-not-at-top
  from atommem_jax.rollout import episode  # pylint: disable=g-import-not-at-top
  from atommem_jax.rollout import host  # pylint: disable=g-import-not-at-top
  env_config = config_lib.env_config(config)
  options = config_lib.oracle_options(config)
  policies = {"oracle": lambda: oracle.OraclePolicy(enabled=env_config.enabled_actions,
                                                    **options),
              "memagent": lambda: oracle.MemAgentPolicy(tokenizer,
                                                        boxed_space=options["boxed_space"])}
  make_policy = policies.get(_POLICY.value)
  sampling = config_lib.sampling_config(config, eos_ids=host.eos_token_ids(tokenizer),
                                        pad_id=tokenizer.pad_token_id, greedy=True)
  if make_policy is not None:  # Teachers write long responses; the env cuts them there anyway.
    sampling = dataclasses.replace(sampling, max_new_tokens=env_config.max_response_chars)
  return episode.EpisodeLoop(
      model_config, tokenizer, env_config, embed.make_embedder(config.embedder),
      batch_size=config.eval.batch_size, prompt_buckets=tuple(config.rollout.prompt_buckets),
      sampling=sampling, mesh=mesh, make_policy=make_policy, trace=True)


def _evaluate(loop, params, contexts, name: str, seed: int):
  """Rollouts of every context, in batches of the loop's batch size."""
  import jax  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top
  rollouts, seconds = [], 0.0
  batches = range(0, len(contexts), loop.batch_size)
  for start in tqdm.tqdm(batches, desc=f"evaluating {name}", unit="batch", file=sys.stderr,
                         disable=len(batches) < 2):
    batch = contexts[start:start + loop.batch_size]
    rollout = loop.run(params, batch, jax.random.key(seed + start))
    rollouts.extend(rollout.episodes)
    seconds += rollout.seconds
  return rollouts, seconds


def answer_recall(context, rollout) -> tuple[list[float], list[float]]:
  """Per question: is a gold answer in the final store; was it among the memories that the
  question's answer steps retrieved (an empty list without traced observations)."""
  from atommem_jax.agent import reward  # pylint: disable=g-import-not-at-top
  in_store = [reward.answer_in_texts(q.answers, [m.text for m in rollout.result.memories])
              for q in context.questions]
  retrieved = [reward.answer_in_texts(q.answers, [
      m.text for o in rollout.observations if o.phase == "answer" and o.question_index == i
      for m in o.retrieved]) for i, q in enumerate(context.questions)]
  return in_store, retrieved if rollout.observations else []


def dataset_summary(contexts, rollouts, seconds: float) -> dict:
  """EM / F1 / reward means, answer recall, sizes and operation usage of one dataset's episodes.

  answer_in_store: share of questions whose gold answer occurs in the final store;
  answer_retrieved: share whose gold answer was among the memories their answer steps read.
  Both are upper bounds (a memory about something else that names the answer also counts).
  EM far below them means the policy did not give an answer it could have read; EM near them
  means what it failed at was storing or finding it.
  """
  from atommem_jax.agent import stats  # pylint: disable=g-import-not-at-top
  exact_match = [em for r in rollouts for em in r.result.exact_match]
  f1 = [score for r in rollouts for score in r.result.f1]
  in_store, retrieved = [], []
  for context, rollout in zip(contexts, rollouts):
    store_part, retrieved_part = answer_recall(context, rollout)
    in_store += store_part
    retrieved += retrieved_part
  return {
      "contexts": len(contexts),
      "questions": len(exact_match),
      "documents_per_context": sum(len(c.documents) for c in contexts) / len(contexts),
      "exact_match": sum(exact_match) / len(exact_match),
      "answer_in_store": sum(in_store) / len(in_store),
      "answer_retrieved": sum(retrieved) / len(retrieved) if retrieved else None,
      "f1": sum(f1) / len(f1),
      "reward": sum(r.result.reward for r in rollouts) / len(rollouts),
      "operations": stats.summarize([r.result.stats for r in rollouts]),
      "seconds": seconds,
      "episodes_per_second": len(rollouts) / seconds if seconds else 0.0,
  }


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
    values = [summary["datasets"][n]["operations"].get(operation, 0.0) for n in names]
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
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _check_flags()
  from atommem_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  try:
    config_lib.validate(config)
  except config_lib.ConfigError as e:
    raise app.UsageError(str(e)) from e
  config_lib.request_cpu_devices(config)
  mesh = config_lib.make_mesh(config)
  checkpoint_dir, trained = None, None
  if _CHECKPOINT.value:
    from atommem_jax.train import run_files  # pylint: disable=g-import-not-at-top
    checkpoint_dir, workdir = run_files.find_checkpoints(_CHECKPOINT.value)
    trained = run_files.trained_model(workdir)
  if trained is not None:  # the tokenizer the run trained with
    from atommem_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
    tokenizer = tokenizer_lib.load_tokenizer(trained[1])
  else:
    tokenizer = _load_tokenizer(config, _HF_DIR.value or _CHECKPOINT.value or
                                config.model.hf_dir or None)
  model_config, params = (_load_model(config, mesh, tokenizer, checkpoint_dir, trained)
                          if _POLICY.value == "model" else (None, None))
  loop = _make_loop(config, tokenizer, model_config, mesh)
  fileio.makedirs(_OUT.value)
  summary = {"policy": _POLICY.value,
             "weights": _CHECKPOINT.value or _HF_DIR.value or config.model.hf_dir or
                        f"random init of {config.model.preset}",
             "tokenizer": config.tokenizer, "embedder": config.embedder,
             "mesh": dict(mesh.shape), "datasets": {}}
  log = [f"# Episodes of policy {_POLICY.value!r}", ""]
  for path in _DATA.value:
    name = SYNTHETIC if path == SYNTHETIC else os.path.splitext(os.path.basename(path))[0]
    contexts = _load_contexts(config, path)
    rollouts, seconds = _evaluate(loop, params, contexts, name, config.seed)
    summary["datasets"][name] = dataset_summary(contexts, rollouts, seconds)
    for context, rollout in zip(contexts, rollouts):
      log += episode_log(name, context, rollout)
    result = summary["datasets"][name]
    print(f"{name}: {result['contexts']} contexts, {result['questions']} questions, "
          f"{result['documents_per_context']:.0f} documents per context: "
          f"EM {result['exact_match']:.3f} F1 {result['f1']:.3f}; answer in store "
          f"{result['answer_in_store']:.3f}, retrieved {result['answer_retrieved'] or 0:.3f}")
  fileio.write_text(fileio.join(_OUT.value, "summary.json"), json.dumps(summary, indent=2))
  write_plot(summary, fileio.join(_OUT.value, "summary.png"))
  fileio.write_text(fileio.join(_OUT.value, "episodes.md"), "\n".join(log) + "\n")
  print(f"wrote summary.json, summary.png and episodes.md to {_OUT.value}")


if __name__ == "__main__":
  from atommem_jax import config_lib  # pylint: disable=g-import-not-at-top
  app.run(main, flags_parser=config_lib.parse_flags)
