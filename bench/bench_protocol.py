"""The scripted teachers under the episode protocol, on the three real QA slices (tests/data).

For each slice, the gold-guided oracle (AtomMem-style) and the MemAgent-style baseline run
the same long contexts through `agent.env.MemoryEnv`; printed per slice: exact match, steps
per episode, store operations per episode (Create / Read / Update / Delete / scratchpad
rewrites) and invalid actions per episode. Two settings: "test" (20 documents a context,
512-token chunks, the contexts of tests/test_oracle.py) and "paper" (200 documents a
context, 4000-token chunks, at most 40 chunks: the paper's reading settings). A third,
"tiny", runs the tiny default's synthetic task as `make demo` sets it up (configs/tiny.py:
its env, template, embedder and BPE, trained here the demo's way; its evaluation contexts,
at most `--contexts` x 40 of them).

  python bench/bench_protocol.py [--embedder minilm] [--settings test,paper,tiny]
                                 [--contexts 6] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import runpy
import sys
import tempfile
import time

from atommem_jax import config_lib
from atommem_jax.agent import env as env_lib
from atommem_jax.agent import oracle
from atommem_jax.data import multihop
from atommem_jax.data.tokenizer import load_tokenizer
from atommem_jax.memory import embed as embed_lib
from atommem_jax.train import contexts as contexts_lib
from atommem_jax.train import tokenizer_training

_DATA = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data"
SLICES = {"hotpotqa": "hotpotqa_dev_100.jsonl", "2wiki": "2wikimultihopqa_dev_100.jsonl",
          "musique": "musique_dev_100.jsonl"}
SETTINGS = {
    "test": dict(num_docs=20, env=dict(chunk_tokens=512, chunk_overlap=100)),
    "paper": dict(num_docs=200, env=dict(chunk_tokens=4000, chunk_overlap=100, max_chunks=40)),
}


def _contexts(dataset: str, num_docs: int, num_contexts: int) -> list[multihop.LongContext]:
  samples = multihop.read_dataset(dataset, str(_DATA / SLICES[dataset]))
  return multihop.build_long_contexts(samples[:3 * num_contexts], num_docs=num_docs, seed=0,
                                      questions_per_context=3, pool=samples)


def _row(name: str, results) -> str:
  count = len(results)
  scores = [em for result in results for em in result.exact_match]
  mean = lambda field: sum(getattr(r.stats, field) for r in results) / count
  return (f"| {name} | {sum(scores) / len(scores):.3f} | {mean('steps'):.1f} | "
          f"{mean('creates'):.1f} / {mean('reads'):.1f} / {mean('updates'):.1f} / "
          f"{mean('deletes'):.1f} / {mean('scratchpad_rewrites'):.1f} | "
          f"{mean('num_invalid'):.2f} |")


def _tiny_rows(num_contexts: int, memagent_tokens: int) -> list[str]:
  """The teachers on the tiny default's evaluation contexts, with its tokenizer."""
  config = runpy.run_path(str(_DATA.parent.parent / "configs" / "tiny.py"))["get_config"]()
  env_config = config_lib.env_config(config)
  embedder = embed_lib.make_embedder(config.embedder)
  options = config_lib.oracle_options(config)
  with tempfile.TemporaryDirectory() as directory:
    tokenizer = tokenizer_training.train_synthetic_tokenizer(
        contexts_lib.synthetic_contexts(config, "train"),
        config_lib.model_config(config).vocab_size, env_config, embedder, directory,
        oracle_options=options)
  contexts = contexts_lib.synthetic_contexts(config, "eval")[:num_contexts]
  atommem = oracle.run_episodes(env_lib.MemoryEnv(env_config, tokenizer, embedder),
                                oracle.OraclePolicy(**options), contexts)
  memagent = oracle.run_episodes(
      env_lib.MemoryEnv(dataclasses.replace(env_config, enable_store=False), tokenizer, embedder),
      oracle.MemAgentPolicy(tokenizer, scratchpad_tokens=memagent_tokens,
                            boxed_space=options["boxed_space"]), contexts)
  prompts = [len(t.prompt_token_ids) for r in atommem for t in r.trajectory]
  empty = sum(t.response == "" for r in atommem for t in r.trajectory) / len(atommem)
  return [_row("synthetic oracle", atommem),
          _row(f"synthetic MemAgent ({memagent_tokens} tokens)", memagent),
          f"(oracle: {empty:.2f} empty responses an episode; prompts of at most "
          f"{max(prompts)} tokens; {sum(r.stats.prompt_cuts for r in atommem)} cut)"]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--embedder", default="minilm", help="memory.embed.make_embedder spec")
  parser.add_argument("--settings", default="test,paper")
  parser.add_argument("--contexts", type=int, default=6, help="contexts of 3 questions a slice")
  parser.add_argument("--memagent_tokens", type=int, default=1024)
  parser.add_argument("--out", help="also write the markdown tables here")
  args = parser.parse_args(argv)
  lines = []

  def emit(line: str) -> None:
    print(line, flush=True)
    lines.append(line)

  tokenizer = load_tokenizer()
  embedder = embed_lib.make_embedder(args.embedder)
  for setting in args.settings.split(","):
    if setting == "tiny":
      emit(f"\nsettings 'tiny' (configs/tiny.py), {args.contexts * 40} evaluation contexts at "
           "most")
      emit("| task / policy | EM | steps/episode | C / R / U / D / scratchpad per episode "
           "| invalid/episode |")
      emit("| --- | --- | --- | --- | --- |")
      for line in _tiny_rows(args.contexts * 40, args.memagent_tokens):
        emit(line)
      continue
    spec = SETTINGS[setting]
    emit(f"\nsettings {setting!r}: {spec}, embedder {args.embedder}, {args.contexts} contexts "
         "x 3 questions a slice")
    emit("| slice / policy | EM | steps/episode | C / R / U / D / scratchpad per episode "
         "| invalid/episode |")
    emit("| --- | --- | --- | --- | --- |")
    for dataset in SLICES:
      start = time.perf_counter()
      contexts = _contexts(dataset, spec["num_docs"], args.contexts)
      atommem = oracle.run_episodes(
          env_lib.MemoryEnv(env_lib.EnvConfig(**spec["env"]), tokenizer, embedder),
          oracle.OraclePolicy(), contexts)
      memagent = oracle.run_episodes(
          env_lib.MemoryEnv(env_lib.EnvConfig(enable_store=False, **spec["env"]), tokenizer,
                            embedder),
          oracle.MemAgentPolicy(tokenizer, scratchpad_tokens=args.memagent_tokens), contexts)
      emit(_row(f"{dataset} oracle", atommem))
      emit(_row(f"{dataset} MemAgent ({args.memagent_tokens} tokens)", memagent))
      print(f"({dataset}: {time.perf_counter() - start:.0f} s)", file=sys.stderr)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
