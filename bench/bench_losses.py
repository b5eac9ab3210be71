"""Chunked vs whole-row lm head in the training loss: XLA's memory figures and time on CPU.

  python bench/bench_losses.py [--preset qwen3-0.1b] [--lengths 2048,8192,16384]
                               [--chunks 0,1024] [--time_lengths 2048] [--repeats 2]
                               [--out FILE]

For one row of each length, the gradient of the SFT loss (every position a target) with
respect to the params: `train.steps`' forward to the final hidden states, then
`model.logprobs.token_logprobs` with `chunk` positions per lm-head call (0: the whole row's
[T, V] fp32 logits at once). Memory: the compiled program's temporary bytes
(`memory_analysis`, the same on any load) next to the fp32 logits of the row. Time: median
over `repeats` runs after a warm-up, for the lengths in --time_lengths only (the 0.1B
preset's lm head is ~0.5 TFLOP per 2k-token row forward and backward on CPU).
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
import numpy as np

from atommem_jax.model import config as config_lib
from atommem_jax.model import logprobs as logprobs_lib
from atommem_jax.model import qwen3


def _loss_fn(config: config_lib.Qwen3Config, chunk: int):
  def loss(params, tokens):
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    hidden, _ = qwen3.forward(config, params, tokens, positions, hidden_only=True)
    logprobs, _ = logprobs_lib.token_logprobs(config, params, hidden, tokens, chunk=chunk)
    return -jnp.mean(logprobs[:, 1:])
  return jax.jit(jax.grad(loss))


def bench(preset: str, lengths, chunks, time_lengths, repeats: int) -> list[dict]:
  config = config_lib.preset(preset, remat="full")
  params_shape = jax.eval_shape(lambda key: qwen3.init_params(config, key), jax.random.key(0))
  params = None
  rows = []
  for length in lengths:
    tokens_shape = jax.ShapeDtypeStruct((1, length), jnp.int32)
    for chunk in chunks:
      grad_fn = _loss_fn(config, chunk)
      compiled = grad_fn.lower(params_shape, tokens_shape).compile()
      memory = compiled.memory_analysis()
      seconds = None
      if length in time_lengths:
        if params is None:
          params = qwen3.init_params(config, jax.random.key(0))
        tokens = jnp.asarray(np.random.RandomState(0).randint(3, config.vocab_size, (1, length)),
                             jnp.int32)
        jax.block_until_ready(compiled(params, tokens))
        times = []
        for _ in range(repeats):
          start = time.perf_counter()
          jax.block_until_ready(compiled(params, tokens))
          times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
      rows.append(dict(length=length, chunk=chunk, temp_gb=memory.temp_size_in_bytes / 1e9,
                       logits_gb=length * config.vocab_size * 4 / 1e9, seconds=seconds))
      print(rows[-1], file=sys.stderr, flush=True)
  return rows


def to_markdown(rows: list[dict], preset: str, command: str) -> str:
  lines = [
      f"Command: `{command}`",
      "",
      f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
      f"jax {jax.__version__} ({jax.devices()[0].platform}); {preset}, fp32, remat full, "
      "one row, gradient of the SFT loss.",
      "",
      "| tokens | loss_chunk | temporaries (GB, XLA) | one copy of the row's fp32 logits (GB) "
      "| time (s) |",
      "| --- | --- | --- | --- | --- |",
  ]
  for r in rows:
    seconds = "–" if r["seconds"] is None else f"{r['seconds']:.2f}"
    lines.append(f"| {r['length']} | {r['chunk'] or 'whole row'} | {r['temp_gb']:.2f} "
                 f"| {r['logits_gb']:.2f} | {seconds} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", default="qwen3-0.1b")
  parser.add_argument("--lengths", default="2048,8192,16384")
  parser.add_argument("--chunks", default="0,1024")
  parser.add_argument("--time_lengths", default="2048")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--out", help="also write the markdown table to this file")
  args = parser.parse_args(argv)
  ints = lambda text: [int(x) for x in text.split(",") if x]
  rows = bench(args.preset, ints(args.lengths), ints(args.chunks), ints(args.time_lengths),
               args.repeats)
  table = to_markdown(rows, args.preset,
                      "python bench/bench_losses.py " + " ".join(argv or sys.argv[1:]))
  print(table)
  if args.out:
    with open(args.out, "w") as f:
      f.write(table + "\n")


if __name__ == "__main__":
  main()
