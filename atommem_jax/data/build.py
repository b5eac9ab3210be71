"""Builds long-context multi-hop QA files from a benchmark split.

  python -m atommem_jax.data.build --dataset hotpotqa --input hotpot_dev.json \
      --num_docs 200 --seed 0 --out hotpotqa_200.jsonl [--questions_per_context 1] [--limit M]

--limit keeps the first M questions; distractors still come from the whole split.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Sequence

import tqdm

from atommem_jax.data import multihop


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m atommem_jax.data.build",
      description="Gold documents plus distractors from the whole split, shuffled per "
                  "context with a seed; written as .jsonl or .parquet.")
  parser.add_argument("--dataset", required=True, choices=multihop.DATASETS)
  parser.add_argument("--input", required=True, help="benchmark file (JSON or JSON lines)")
  parser.add_argument("--num_docs", required=True, type=int,
                      help="documents per context (the paper uses 200, 400, 800)")
  parser.add_argument("--seed", required=True, type=int)
  parser.add_argument("--out", required=True, help="output file, .jsonl or .parquet")
  parser.add_argument("--questions_per_context", type=int, default=1)
  parser.add_argument("--limit", type=int, default=None,
                      help="build contexts for the first LIMIT questions only")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = _parse_args(argv)
  try:
    samples = multihop.read_dataset(args.dataset, args.input)
    print(f"read {len(samples)} questions from {args.input} ({args.dataset})")
    selected = samples[:args.limit] if args.limit is not None else samples
    total = math.ceil(len(selected) / max(args.questions_per_context, 1))
    contexts = list(tqdm.tqdm(
        multihop.iter_long_contexts(selected, args.num_docs, args.seed,
                                    args.questions_per_context, pool=samples),
        total=total, desc="building contexts", unit="ctx", file=sys.stderr,
        disable=total < 100))
    multihop.save_long_contexts(contexts, args.out)
  except (multihop.DataError, ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  _print_summary(contexts, args.out)
  return 0


def _print_summary(contexts: Sequence[multihop.LongContext], out: str) -> None:
  num_docs = [len(c.documents) for c in contexts]
  chars = [len(multihop.render_context(c.documents)) for c in contexts]
  questions = sum(len(c.questions) for c in contexts)
  print(f"wrote {len(contexts)} contexts ({questions} questions) to {out}")
  print(f"documents per context: mean {sum(num_docs) / len(num_docs):.1f}, "
        f"min {min(num_docs)}, max {max(num_docs)}")
  print(f"characters per rendered context: mean {sum(chars) / len(chars):,.0f}, "
        f"max {max(chars):,}")


if __name__ == "__main__":
  sys.exit(main())
