r"""Teacher trajectories for SFT, as chat-message JSON lines.

  python -m atommem_jax.collect --config configs/NAME.py --teacher oracle|memagent|hf:DIR \
      --out sft.jsonl [--data FILE ...] [--limit N] [--min_reward 0.5] [--temperature 0.6] \
      [--config.x=y ...]

Runs the teacher through the environment on the contexts of --data (LongContext files from
`python -m atommem_jax.data.build`; default: the config's training contexts), keeps the
episodes whose reward is at least --min_reward, and writes one line per step of a kept episode:
{"messages": [system, user, {"role": "assistant", "content": response}]}, the format of TRL
and of the official SFT scripts, read back by config field data.sft_file. The response is kept
as generated, thinking text included.

Teachers: "oracle" and "memagent" are the scripted policies of `agent.oracle`; "hf:DIR" is a
Qwen3 checkpoint in a Hugging Face directory (its own tokenizer when the directory has one,
else config field tokenizer), sampled through our sampler on the config's mesh at
--temperature with the config's top_p and top_k. Single host.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Callable, Iterable, Sequence

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from atommem_jax import cli
from atommem_jax import config_lib
from atommem_jax import fileio
from atommem_jax.agent import env as env_lib
from atommem_jax.agent import oracle
from atommem_jax.data import multihop
from atommem_jax.data import tokenizer as tokenizer_lib
from atommem_jax.memory import embed
from atommem_jax.model import hf
from atommem_jax.rollout import episode
from atommem_jax.rollout import host
from atommem_jax.train import contexts as contexts_lib

FLAGS = flags.FLAGS
PROG = "atommem_jax.collect"


def define_flags() -> None:
  """The CLI's flags: defined when it runs, not on import (tests import every CLI module
  into one process, and two modules defining --config would clash)."""
  config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py)")
  flags.DEFINE_string("teacher", None,
                      "oracle, memagent, or hf:DIR (a Hugging Face Qwen3 directory)")
  flags.DEFINE_string("out", None, "chat-message JSON lines to write (a path or URL)")
  flags.DEFINE_multi_string("data", None, "LongContext .jsonl/.parquet files (default: the "
                            "config's training contexts)")
  flags.DEFINE_integer("limit", None, "run the first N contexts only")
  flags.DEFINE_float("min_reward", 0.5, "keep episodes with at least this reward")
  flags.DEFINE_float("temperature", 0.6, "sampling temperature of an hf: teacher")


SCRIPTED = ("oracle", "memagent")
HF_PREFIX = "hf:"

# Runs a batch of contexts, the first at `start` in the whole list; one result per context.
RunBatch = Callable[[Sequence[multihop.LongContext], int], list[env_lib.EpisodeResult]]


def chat_rows(result: env_lib.EpisodeResult) -> list[dict]:
  """One chat-message row per step of an episode: its prompt messages, then the response."""
  return [{"messages": [{"role": m["role"], "content": m["content"]}
                        for m in turn.prompt_messages]
                       + [{"role": "assistant", "content": turn.response}]}
          for turn in result.trajectory]


@dataclasses.dataclass
class Collected:
  contexts: int = 0
  kept: int = 0
  rows: int = 0
  reward_sum: float = 0.0

  def line(self, total: int) -> str:
    mean = self.reward_sum / self.contexts if self.contexts else 0.0
    return (f"collect: {self.contexts}/{total} contexts, mean reward {mean:.3f}, kept "
            f"{self.kept} episodes, {self.rows} examples")


class NothingKeptError(ValueError):
  """No episode reached --min_reward: there is nothing to write."""


def collect(contexts: Sequence[multihop.LongContext], run_batch: RunBatch, batch_size: int,
            min_reward: float, out: str,
            progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr)
            ) -> Collected:
  """Runs every context in batches, writes the kept episodes' steps to `out`; returns counts."""
  counts, lines = Collected(), []
  for start in range(0, len(contexts), batch_size):
    results = run_batch(contexts[start:start + batch_size], start)
    for result in results:
      counts.contexts += 1
      counts.reward_sum += result.reward
      if result.reward >= min_reward:
        rows = chat_rows(result)
        counts.kept += 1
        counts.rows += len(rows)
        lines += [json.dumps(row, ensure_ascii=False) for row in rows]
    progress(counts.line(len(contexts)))
  if not lines:
    raise NothingKeptError(f"no episode reached reward {min_reward} in {len(contexts)} "
                           "contexts; nothing to write (lower --min_reward or check the "
                           "teacher)")
  fileio.write_text(out, "\n".join(lines) + "\n")
  return counts


def scripted_runner(teacher: str, config, tokenizer) -> RunBatch:
  """Batches of the oracle or MemAgent teacher, run on the host environment."""
  env_config = config_lib.env_config(config)
  embedder = embed.make_embedder(config.embedder)
  options = config_lib.oracle_options(config)

  def policy():
    if teacher == "oracle":
      return oracle.OraclePolicy(enabled=env_config.enabled_actions, **options)
    return oracle.MemAgentPolicy(tokenizer, boxed_space=options["boxed_space"])

  def run(batch, start):
    del start  # scripted teachers draw nothing at random
    env = env_lib.MemoryEnv(env_config, tokenizer, embedder)
    return oracle.run_episodes(env, policy(), batch)

  return run


def model_runner(hf_dir: str, config, tokenizer, temperature: float) -> RunBatch:
  """Batches of a Qwen3 checkpoint sampled through the jitted episode loop on the mesh."""
  mesh = config_lib.make_mesh(config)
  model_config, params = hf.load_hf(
      hf_dir, config.model.rollout_dtype, mesh=mesh,
      config_overrides=config_lib.execution_fields(config, rollout=True))
  if len(tokenizer) > model_config.vocab_size:
    raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but {hf_dir} has vocab_size "
                     f"{model_config.vocab_size}; use the checkpoint's own tokenizer")
  sampling = dataclasses.replace(
      config_lib.sampling_config(config, eos_ids=host.eos_token_ids(tokenizer),
                                 pad_id=tokenizer.pad_token_id),
      temperature=temperature)
  loop = episode.EpisodeLoop(
      model_config, tokenizer, config_lib.env_config(config), embed.make_embedder(config.embedder),
      batch_size=config.eval.batch_size, prompt_buckets=tuple(config.rollout.prompt_buckets),
      sampling=sampling, mesh=mesh)

  def run(batch, start):
    rollout = loop.run(params, batch, jax.random.key(config.seed + start))
    return [e.result for e in sorted(rollout.episodes, key=lambda e: e.episode)]

  return run


def load_contexts(config, paths: Iterable[str] | None, limit: int | None
                  ) -> list[multihop.LongContext]:
  contexts = ([c for path in paths for c in multihop.load_long_contexts(path)] if paths
              else contexts_lib.load_contexts(config, "train"))
  return contexts[:limit] if limit else contexts


def _hf_dir(teacher: str) -> str | None:
  return teacher[len(HF_PREFIX):] or None if teacher.startswith(HF_PREFIX) else None


def _check_flags() -> None:
  teacher = FLAGS.teacher or ""
  hf_dir = _hf_dir(teacher)
  if teacher not in SCRIPTED and not hf_dir:
    raise app.UsageError(f"--teacher {teacher!r}: give oracle, memagent or hf:DIR")
  if hf_dir and not fileio.isdir(hf_dir):
    raise app.UsageError(f"--teacher {teacher}: no such directory")
  if not FLAGS.out:
    raise app.UsageError("--out is required: the chat-message JSON lines to write")
  if FLAGS.temperature <= 0:
    raise app.UsageError(f"--temperature {FLAGS.temperature}: must be > 0")
  for path in FLAGS.data or ():
    if not fileio.isfile(path):
      raise app.UsageError(f"--data {path}: no such file; build one with `python -m "
                           "atommem_jax.data.build`")


def main(argv: Sequence[str]) -> None:
  del argv  # cli.run refuses positional arguments
  config = cli.load_config(PROG)
  _check_flags()
  teacher = FLAGS.teacher
  hf_dir = _hf_dir(teacher)
  contexts = load_contexts(config, FLAGS.data, FLAGS.limit)
  try:  # the tokenizer field and an hf: teacher's files are the user's to fix
    tokenizer = tokenizer_lib.load_tokenizer(
        tokenizer_lib.resolve_tokenizer_dir(config.tokenizer, hf_dir))
    run_batch = (model_runner(hf_dir, config, tokenizer, FLAGS.temperature) if hf_dir
                 else scripted_runner(teacher, config, tokenizer))
  except (OSError, ValueError) as e:  # a missing or malformed file, named in the message
    raise app.UsageError(f"--teacher {teacher}: {e}" if hf_dir else str(e)) from e
  try:
    counts = collect(contexts, run_batch, config.eval.batch_size, FLAGS.min_reward,
                     FLAGS.out)
  except NothingKeptError as e:
    raise app.UsageError(str(e)) from e
  print(f"wrote {counts.rows} examples from {counts.kept} of {counts.contexts} episodes "
        f"(reward >= {FLAGS.min_reward}) to {FLAGS.out}")


if __name__ == "__main__":
  define_flags()
  cli.run(main, PROG)
