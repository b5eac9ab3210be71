"""Rollout speed: greedy decode vs transformers, and the jitted episode loop on the tiny config.

  python bench/bench_rollout.py [--presets tiny,qwen3-0.1b] [--batch 8] [--new_tokens 256]
                                [--prompt_len 512] [--contexts 4] [--group_size 4]
                                [--repeats 2] [--out FILE]

1. Decode: greedy generation of `new_tokens` tokens for `batch` ragged prompts, ours
   (`rollout.sampler.generate`) vs `transformers` `generate(do_sample=False)`, same config,
   weights and inputs, fp32 (`bench_model.bench_preset`); tokens/s = batch * new_tokens / time.
2. Episodes on configs/tiny.py (random-init tiny Qwen3, synthetic contexts; its BPE tokenizer
   trained here on the contexts and the rendered prompts, as the training run would):
   `contexts` x `group_size` episodes per run (a GRPO batch), sampled with the config's
   rollout settings. Ours: one `EpisodeLoop.run` (one XLA program; "callback share" is the
   time spent inside its host callbacks over its wall time). Reference: the same sampler
   called once per step from a Python loop over `MemoryEnv` (what a host-driven rollout
   does). Also the scripted oracle through the loop vs `agent.oracle.run_episodes`.
Times are medians over `repeats` runs after a warm-up run (compile time reported apart).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import torch

from atommem_jax import config_lib
from atommem_jax.agent import env as env_lib
from atommem_jax.agent import oracle
from atommem_jax.data import multihop
from atommem_jax.data import synthetic
from atommem_jax.data import tokenizer as tokenizer_lib
from atommem_jax.memory import embed
from atommem_jax.model import qwen3
from atommem_jax.rollout import episode
from atommem_jax.rollout import host
from atommem_jax.rollout import sampler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_model  # pylint: disable=g-import-not-at-top,wrong-import-position

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_config():
  sys.path.insert(0, os.path.join(_REPO, "configs"))
  import tiny  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.data.synthetic.doc_length = 4  # the generator's minimum
  return config


def _contexts(config, count: int):
  fields = dict(config.data.synthetic)
  fields.pop("train_contexts")
  fields.pop("eval_contexts")
  return synthetic.generate_synthetic(count, seed=config.seed, **fields)


def _tokenizer(config, contexts, vocab_size: int):
  """A BPE of the model's vocab size trained on the documents and the prompts."""
  reference_env = env_lib.MemoryEnv(config_lib.env_config(config),
                                    tokenizer_lib.load_tokenizer(),
                                    embed.make_embedder(config.embedder))
  prompts, observations = [], reference_env.reset(contexts)
  while observations:
    prompts += [o.prompt_text for o in observations]
    observations = reference_env.step([""] * len(observations))
  texts = [multihop.render_context(c.documents) for c in contexts] + prompts
  return tokenizer_lib.train_bpe_tokenizer(texts, vocab_size)


def _timed(fn, repeats: int) -> tuple[float, list]:
  """(seconds of the warm-up call, results of `repeats` timed calls as (seconds, value))."""
  start = time.perf_counter()
  fn()
  compile_seconds = time.perf_counter() - start
  runs = []
  for _ in range(repeats):
    start = time.perf_counter()
    value = fn()
    runs.append((time.perf_counter() - start, value))
  return compile_seconds, runs


def _host_driven(model_config, params, tokenizer, env_config, embedder, contexts, sampling,
                 buckets, rng) -> int:
  """The reference rollout: `sampler.generate` once per step from Python; returns steps."""
  env = env_lib.MemoryEnv(env_config, tokenizer, embedder)
  observations, steps = env.reset(contexts), 0
  while observations:
    rng, key = jax.random.split(rng)
    prompts = [o.prompt_token_ids for o in observations]
    tokens, mask = sampler.left_pad(
        prompts, sampler.bucket_length(max(map(len, prompts)), buckets), sampling.pad_id)
    out = jax.device_get(sampler.generate(model_config, params, jnp.asarray(tokens),
                                          jnp.asarray(mask), key, sampling))
    responses = []
    for row in range(len(observations)):
      ids = out.tokens[row, :out.lengths[row]].tolist()
      ids = ids[:-1] if ids and ids[-1] in sampling.eos_ids else ids
      responses.append(tokenizer.decode(ids, skip_special_tokens=False))
    observations = env.step(responses, [row[:n].tolist() for row, n in
                                        zip(out.logprobs, out.lengths)])
    steps += 1
  return steps


def bench_episodes(num_contexts: int, group_size: int, repeats: int) -> list[dict]:
  config = _tiny_config()
  model_config = config_lib.model_config(config, rollout=True)
  contexts = _contexts(config, num_contexts)
  tokenizer = _tokenizer(config, _contexts(config, 16), model_config.vocab_size)
  env_config = config_lib.env_config(config)
  embedder = embed.make_embedder(config.embedder)
  buckets = tuple(config.rollout.prompt_buckets)
  sampling = config_lib.sampling_config(config, eos_ids=host.eos_token_ids(tokenizer),
                                        pad_id=tokenizer.pad_token_id)
  params = qwen3.init_params(model_config, jax.random.key(0))
  episodes = num_contexts * group_size
  rows = []

  loop = episode.EpisodeLoop(model_config, tokenizer, env_config, embedder,
                             batch_size=episodes, prompt_buckets=buckets, sampling=sampling)
  compile_seconds, runs = _timed(
      lambda: loop.run(params, contexts, jax.random.key(1), group_size=group_size), repeats)
  rollouts = [rollout for _, rollout in runs]
  rows.append(dict(
      what=f"tiny model, sampled: jitted episode loop ({episodes} episodes)",
      seconds=statistics.median(s for s, _ in runs), episodes=episodes,
      steps=rollouts[0].steps, compile_s=compile_seconds,
      callback_share=statistics.median(r.callback_seconds / r.seconds for r in rollouts)))
  repeated = [c for c in contexts for _ in range(group_size)]
  compile_seconds, runs = _timed(
      lambda: _host_driven(model_config, params, tokenizer, env_config, embedder, repeated,
                           sampling, buckets, jax.random.key(1)), repeats)
  rows.append(dict(
      what="tiny model, sampled: host-driven loop (sampler per step)",
      seconds=statistics.median(s for s, _ in runs), episodes=episodes, steps=runs[0][1],
      compile_s=compile_seconds, callback_share=None))

  scripted = episode.EpisodeLoop(
      None, tokenizer, env_config, embedder, batch_size=episodes, prompt_buckets=buckets,
      sampling=sampler.SamplingConfig(max_new_tokens=env_config.max_response_chars,
                                      pad_id=tokenizer.pad_token_id),
      make_policy=lambda: oracle.OraclePolicy(enabled=env_config.enabled_actions))
  compile_seconds, runs = _timed(
      lambda: scripted.run(None, contexts, jax.random.key(1), group_size=group_size), repeats)
  rollouts = [rollout for _, rollout in runs]
  rows.append(dict(
      what="oracle (scripted): jitted episode loop", seconds=statistics.median(
          s for s, _ in runs), episodes=episodes, steps=rollouts[0].steps,
      compile_s=compile_seconds,
      callback_share=statistics.median(r.callback_seconds / r.seconds for r in rollouts)))
  compile_seconds, runs = _timed(
      lambda: oracle.run_episodes(env_lib.MemoryEnv(env_config, tokenizer, embedder),
                                  oracle.OraclePolicy(enabled=env_config.enabled_actions),
                                  repeated), repeats)
  rows.append(dict(
      what="oracle (scripted): host `run_episodes`", seconds=statistics.median(
          s for s, _ in runs), episodes=episodes,
      steps=max(len(r.trajectory) for r in runs[0][1]), compile_s=None, callback_share=None))
  return rows


def to_markdown(decode_rows: list[dict], episode_rows: list[dict], command: str,
                load_before: tuple[float, ...]) -> str:
  lines = [
      f"Command: `{command}`", "",
      f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
      f"{bench_model.load_line(load_before)}; jax {jax.__version__} "
      f"({jax.devices()[0].platform}); fp32; medians after a warm-up.", "",
      "| preset | params | batch x prompt | new tokens | decode ours (tok/s) "
      "| decode HF (tok/s) | ours / HF | greedy tokens equal | our compile (s) "
      "| CPU s ours / HF |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for r in decode_rows:
    tokens = r["batch"] * r["new_tokens"]
    lines.append(
        f"| {r['preset']} | {r['params_m']:.1f}M | {r['batch']} x {r['prompt_len']} "
        f"| {r['new_tokens']} | {tokens / r['ours_decode_s']:.0f} "
        f"| {tokens / r['theirs_decode_s']:.0f} "
        f"| {r['theirs_decode_s'] / r['ours_decode_s']:.2f} | {r['same_tokens']:.0%} "
        f"| {r['ours_decode_compile_s']:.1f} "
        f"| {r['ours_decode_cpu_s']:.2f} / {r['theirs_decode_cpu_s']:.2f} |")
  lines += ["", "| rollout (configs/tiny.py) | episodes | steps | wall (s) | episodes/s "
            "| host-callback share | compile (s) |", "| --- | --- | --- | --- | --- | --- | --- |"]
  for r in episode_rows:
    share = "" if r["callback_share"] is None else f"{r['callback_share']:.0%}"
    compile_s = "" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
    lines.append(f"| {r['what']} | {r['episodes']} | {r['steps']} | {r['seconds']:.2f} "
                 f"| {r['episodes'] / r['seconds']:.2f} | {share} | {compile_s} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--presets", default="tiny,qwen3-0.1b",
                      help="decode presets; empty to skip the decode comparison")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--prompt_len", type=int, default=512,
                      help="longest prompt; bench_model makes row i 37 * i tokens shorter")
  parser.add_argument("--new_tokens", type=int, default=256)
  parser.add_argument("--contexts", type=int, default=4)
  parser.add_argument("--group_size", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--out", help="also write the markdown tables to this file")
  args = parser.parse_args(argv)
  torch.set_num_threads(os.cpu_count() or 1)
  load_before = os.getloadavg()
  decode_rows = []
  for name in filter(None, args.presets.split(",")):
    print(f"decode: {name} ...", file=sys.stderr, flush=True)
    decode_rows.append(bench_model.bench_preset(name, args.batch, args.prompt_len,
                                                args.new_tokens, args.repeats))
  print("episodes ...", file=sys.stderr, flush=True)
  episode_rows = bench_episodes(args.contexts, args.group_size, args.repeats)
  table = to_markdown(decode_rows, episode_rows,
                      "python bench/bench_rollout.py " + " ".join(argv or sys.argv[1:]),
                      load_before)
  print(table)
  if args.out:
    with open(args.out, "w") as f:
      f.write(table + "\n")


if __name__ == "__main__":
  main()
