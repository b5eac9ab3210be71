"""Dense vs blockwise attention on CPU: time and XLA's memory figures, prefill and decode.

  python bench/bench_attention.py [--preset qwen3-0.1b] [--lengths 2048,8192,16384]
                                  [--batch 1] [--decode_batch 8] [--modes prefill,decode]
                                  [--repeats 2] [--max_temp_gib 6.5] [--out FILE]

One layer's attention core (q [B, T, N, H], k/v [B, T, K, H] -> [B, T, N, H], fp32) with the
preset's head shape, causal over one unpadded row: the forward, and the forward plus the
gradient wrt q, k and v. Memory is what XLA plans for the compiled program
(`memory_analysis()`: temporaries, and the peak = arguments + outputs + temporaries), so it is
known even where the program would not fit; a program whose temporaries exceed
--max_temp_gib is compiled but not run. Decode: one query at the last slot of a full cache
of that length, batch --decode_batch (what every sampler step does per layer; the worst case
for blockwise, which skips the blocks after the query's slot), median of 20 runs. Other
times are medians of --repeats runs after a warm-up run.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from atommem_jax.model import attention
from atommem_jax.model import config as config_lib

GiB = 1 << 30


def _median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _programs(impl: str, block: int):
  """(forward, forward+backward) of one attention call on self-attention inputs."""
  def core(q, k, v, mask):
    if impl == "dense":
      return attention.dense_attention(q, k, v, mask)
    return attention.blockwise_attention(q, k, v, mask, block, block)

  def loss(q, k, v, mask):
    return jnp.sum(core(q, k, v, mask) * q)  # a cotangent that is not all ones

  return jax.jit(core), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def _measure(fn, args, repeats: int, max_temp_gib: float) -> dict:
  compiled = fn.lower(*args).compile()
  memory = compiled.memory_analysis()
  temp = memory.temp_size_in_bytes
  peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes + temp
          - memory.alias_size_in_bytes)
  row = dict(temp_gib=temp / GiB, peak_gib=peak / GiB, seconds=None)
  if temp / GiB <= max_temp_gib:
    jax.block_until_ready(compiled(*args))  # warm-up
    row["seconds"] = _median_seconds(lambda: compiled(*args), repeats)
  return row


def _inputs(config: config_lib.Qwen3Config, batch: int, length: int, keys: int):
  rng = np.random.default_rng(0)
  n, k, h = config.num_attention_heads, config.num_key_value_heads, config.head_dim
  q = jnp.asarray(rng.standard_normal((batch, length, n, h)), jnp.float32)
  key, value = (jnp.asarray(rng.standard_normal((batch, keys, k, h)), jnp.float32)
                for _ in range(2))
  return q, key, value


def bench_prefill(config: config_lib.Qwen3Config, length: int, batch: int, repeats: int,
                  max_temp_gib: float, block: int) -> list[dict]:
  q, key, value = _inputs(config, batch, length, length)
  mask = attention.AttentionMask.causal(jnp.ones((batch, length), bool))
  rows = []
  for impl in ("dense", "blockwise"):
    forward, backward = _programs(impl, block)
    for mode, fn in (("forward", forward), ("forward+backward", backward)):
      print(f"  {impl} {mode} T={length} ...", file=sys.stderr, flush=True)
      rows.append(dict(impl=impl, mode=mode, length=length,
                       **_measure(fn, (q, key, value, mask), repeats, max_temp_gib)))
  return rows


def bench_decode(config: config_lib.Qwen3Config, length: int, batch: int,
                 max_temp_gib: float, block: int) -> list[dict]:
  q, key, value = _inputs(config, batch, 1, length)
  mask = attention.AttentionMask(jnp.asarray([length - 1], jnp.int32),
                                 jnp.ones((batch, length), bool))
  rows = []
  for impl in ("dense", "blockwise"):
    print(f"  {impl} decode S={length} ...", file=sys.stderr, flush=True)
    rows.append(dict(impl=impl, mode=f"decode (T=1, batch {batch})", length=length,
                     **_measure(_programs(impl, block)[0], (q, key, value, mask), 20,
                                max_temp_gib)))
  return rows


def to_markdown(rows: list[dict], config_name: str, config: config_lib.Qwen3Config,
                batch: int, block: int, command: str) -> str:
  lines = [
      f"Command: `{command}`",
      "",
      f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
      f"jax {jax.__version__} ({jax.devices()[0].platform}); fp32. Shape: {config_name}'s "
      f"attention (N={config.num_attention_heads} query heads, K={config.num_key_value_heads} "
      f"kv heads, H={config.head_dim}), batch {batch} unless said, one layer; blockwise tiles "
      f"{block} x {block}.",
      "",
      "| tokens | pass | dense (s) | blockwise (s) | dense/blockwise time "
      "| dense temp / peak (GiB) | blockwise temp / peak (GiB) |",
      "| --- | --- | --- | --- | --- | --- | --- |",
  ]
  by_key = {(r["length"], r["mode"], r["impl"]): r for r in rows}
  for length, mode in dict.fromkeys((r["length"], r["mode"]) for r in rows):
    dense, block_row = by_key[(length, mode, "dense")], by_key[(length, mode, "blockwise")]
    seconds = lambda r: "not run" if r["seconds"] is None else f"{r['seconds']:.3f}"
    ratio = ("-" if dense["seconds"] is None or block_row["seconds"] is None
             else f"{dense['seconds'] / block_row['seconds']:.2f}")
    lines.append(
        f"| {length} | {mode} | {seconds(dense)} | {seconds(block_row)} | {ratio} "
        f"| {dense['temp_gib']:.3f} / {dense['peak_gib']:.3f} "
        f"| {block_row['temp_gib']:.3f} / {block_row['peak_gib']:.3f} |")
  lines += ["", "dense/blockwise above 1 means blockwise is faster. \"not run\": XLA's "
            "temporaries exceed --max_temp_gib; the memory figures are still the compiler's."]
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", default="qwen3-0.1b")
  parser.add_argument("--lengths", default="2048,8192,16384")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--decode_batch", type=int, default=8)
  parser.add_argument("--modes", default="prefill,decode")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--max_temp_gib", type=float, default=6.5)
  parser.add_argument("--block", type=int, default=512)
  parser.add_argument("--out", help="also write the markdown table to this file")
  args = parser.parse_args(argv)
  config = config_lib.preset(args.preset)
  rows = []
  for length in (int(x) for x in args.lengths.split(",")):
    if "prefill" in args.modes:
      rows += bench_prefill(config, length, args.batch, args.repeats, args.max_temp_gib,
                            args.block)
    if "decode" in args.modes:
      rows += bench_decode(config, length, args.decode_batch, args.max_temp_gib, args.block)
  table = to_markdown(rows, args.preset, config, args.batch, args.block,
                      "python bench/bench_attention.py " + " ".join(argv or sys.argv[1:]))
  print(table)
  if args.out:
    with open(args.out, "w") as f:
      f.write(table + "\n")


if __name__ == "__main__":
  main()
