"""MemoryStore throughput, latency and recall: ScaNN backend vs exact numpy, same data.

For each size the store is filled by one bulk create, then timed on single-entry
create/update/delete calls and on reads of 1 and 32 queries (k=6); recall@6 of ScaNN
is measured against the exact backend on the same queries. Data: unit vectors around
random centres (50 per centre, cosine to the centre ~0.7, like text embeddings of
related facts) with queries that perturb stored points, or `--data random` (unit
Gaussian vectors and queries, the worst case for a partitioned index).

  python bench/bench_store.py [--sizes 1000,100000,1000000] [--out FILE]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import numpy as np

from atommem_jax.memory import store as store_lib

K = 6


def unit_vectors(rng: np.random.Generator, n: int, dim: int, data: str,
                 chunk: int = 100_000) -> np.ndarray:
  """[n, dim] float32 unit rows, generated in chunks to bound float64 temporaries."""
  out = np.empty((n, dim), np.float32)
  centres = rng.standard_normal((max(1, n // 50), dim))
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  for start in range(0, n, chunk):
    rows = min(chunk, n - start)
    noise = rng.standard_normal((rows, dim))
    if data == "clustered":
      block = centres[rng.integers(0, len(centres), rows)] + noise / math.sqrt(dim)
    else:
      block = noise
    out[start:start + rows] = block / np.linalg.norm(block, axis=1, keepdims=True)
  return out


def queries_for(rng, vectors, num, data):
  dim = vectors.shape[1]
  if data == "clustered":
    picked = vectors[rng.integers(0, len(vectors), num)]
    return picked + rng.standard_normal((num, dim)) / math.sqrt(dim)
  return rng.standard_normal((num, dim))


def rss_gib() -> float:
  with open("/proc/self/status") as status:
    for line in status:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 2**20
  return float("nan")


def ops_per_second(op, count: int) -> float:
  op(-1)  # Untimed first call: pays one-off costs such as the table growing.
  start = time.perf_counter()
  for i in range(count):
    op(i)
  return count / (time.perf_counter() - start)


def mean_ms(call, repeats: int) -> float:
  call()
  start = time.perf_counter()
  for _ in range(repeats):
    call()
  return 1e3 * (time.perf_counter() - start) / repeats


def bench_size(n: int, args, rng) -> list[dict]:
  vectors = unit_vectors(rng, n, args.dim, args.data)
  queries = queries_for(rng, vectors, args.recall_queries, args.data)
  ops = min(args.ops, (n - 2) // 2)  # Updates and deletes touch distinct entries.
  fresh = unit_vectors(rng, 2 * ops + 2, args.dim, "random")
  live = rng.permutation(n)  # Both backends see the same operations.
  rows, stores = [], {}
  for backend in ("exact", "scann"):
    store = store_lib.MemoryStore(args.dim, backend=backend)
    start = time.perf_counter()
    store.create([f"m{i}" for i in range(n)], vectors)
    build_s = time.perf_counter() - start
    row = dict(n=n, backend=backend, mode=store.search_mode, build_s=build_s,
               rss=rss_gib())
    row["q1_ms"] = mean_ms(lambda: store.read(queries[:1], K), args.repeats)
    row["q32_ms"] = mean_ms(lambda: store.read(queries[:32], K),
                            max(1, args.repeats // 4))
    row["create"] = ops_per_second(
        lambda i: store.create(["new"], fresh[i + 1:i + 2]), ops)
    row["update"] = ops_per_second(
        lambda i: store.update(int(live[i + 1]), "upd", fresh[ops + 2 + i]),
        ops)
    row["delete"] = ops_per_second(
        lambda i: store.delete(int(live[ops + 2 + i])), ops)
    rows.append(row)
    stores[backend] = store
  got = stores["scann"].read(queries, K)
  want = stores["exact"].read(queries, K)
  rows[1]["recall"] = float(np.mean(
      [len({r.id for r in g} & {r.id for r in w}) / K for g, w in zip(got, want)]))
  return rows


def markdown(rows: list[dict], args) -> str:
  lines = [
      f"MemoryStore, dim {args.dim}, {args.data} data, k={K}; "
      f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs. "
      f"Ops/s over {args.ops} single-entry calls (fewer for tiny stores) after "
      "a bulk create, reads before those calls; recall@6 "
      f"of ScaNN vs exact over {args.recall_queries} queries.",
      "",
      "| entries | backend | search | bulk create s | create/s | update/s | "
      "delete/s | read 1 query ms | read 32 queries ms | recall@6 | RSS GiB |",
      "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    recall = f"{r['recall']:.3f}" if "recall" in r else "1 (reference)"
    lines.append(
        f"| {r['n']:,} | {r['backend']} | {r['mode']} | {r['build_s']:.2f} | "
        f"{r['create']:,.0f} | {r['update']:,.0f} | {r['delete']:,.0f} | "
        f"{r['q1_ms']:.3f} | {r['q32_ms']:.3f} | {recall} | {r['rss']:.1f} |")
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="1000,100000,1000000",
                      help="comma-separated store sizes")
  parser.add_argument("--dim", type=int, default=384)
  parser.add_argument("--data", choices=("clustered", "random"),
                      default="clustered")
  parser.add_argument("--ops", type=int, default=200,
                      help="single-entry calls timed per operation")
  parser.add_argument("--repeats", type=int, default=40,
                      help="reads timed per latency figure (32-query: a quarter)")
  parser.add_argument("--recall-queries", type=int, default=300)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", help="also write the markdown table here")
  args = parser.parse_args()
  rng = np.random.default_rng(args.seed)
  rows = []
  for n in (int(s) for s in args.sizes.split(",")):
    start = time.perf_counter()
    rows += bench_size(n, args, rng)
    print(f"size {n:,} done in {time.perf_counter() - start:.0f} s", flush=True)
  table = markdown(rows, args)
  print(table)
  if args.out:
    with open(args.out, "w") as out:
      out.write(table)


if __name__ == "__main__":
  main()
