"""Builds long-context multi-hop QA files from a benchmark split.

The official protocol (`atommem_jax.data.protocol`; the default): 1 to 10 consecutive
questions per context, each with all its paragraphs, padded with random paragraphs of the
split up to --num_docs, shuffled, cut in the middle past --max_context_tokens:

  python -m atommem_jax.data.build --preset hotpotqa_train --input hotpot_train_v1.1.json \
      --num_docs 200 --out hotpotqa_train_200.jsonl            # the RL data
  python -m atommem_jax.data.build --preset musique_dev --input musique_ans_v1.0_dev.jsonl \
      --num_docs 800 --out musique_dev_800.jsonl               # evaluation: 200, 400, 800

A preset (hotpotqa_train, hotpotqa_dev, 2wiki_dev, musique_dev) sets --dataset, --limit and
--max_contexts as the official run does; flags given explicitly win. --protocol gold_only
builds the older layout: --questions_per_context questions (default 1) with only their
supporting paragraphs, padded the same way. --limit keeps the first LIMIT questions; padding
paragraphs still come from the whole split.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable, Sequence

import tqdm

from atommem_jax.data import multihop
from atommem_jax.data import protocol
from atommem_jax.data import tokenizer as tokenizer_lib

PROTOCOLS = ("official", "gold_only")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m atommem_jax.data.build",
      description="Long multi-hop QA contexts from a benchmark split, written as .jsonl or "
                  ".parquet (see the module docstring).")
  parser.add_argument("--preset", choices=sorted(protocol.OFFICIAL_SPLITS),
                      help="the official run's settings for one split")
  parser.add_argument("--dataset", choices=multihop.DATASETS)
  parser.add_argument("--input", required=True, help="benchmark file (JSON or JSON lines)")
  parser.add_argument("--num_docs", required=True, type=int,
                      help="documents per context (the paper uses 200, 400, 800)")
  parser.add_argument("--seed", type=int, default=protocol.SEED)
  parser.add_argument("--out", required=True, help="output file, .jsonl or .parquet")
  parser.add_argument("--protocol", choices=PROTOCOLS, default="official")
  parser.add_argument("--max_questions", type=int, default=protocol.MAX_QUESTIONS,
                      help="official: questions per context at most")
  parser.add_argument("--questions_per_context", type=int, default=1, help="gold_only only")
  parser.add_argument("--limit", type=int, default=None,
                      help="build contexts for the first LIMIT questions only")
  parser.add_argument("--max_contexts", type=int, default=None,
                      help="official: keep the first MAX_CONTEXTS contexts")
  parser.add_argument("--max_context_tokens", type=int, default=protocol.MAX_CONTEXT_TOKENS,
                      help="official: cut longer contexts in the middle (0: never)")
  parser.add_argument("--tokenizer", default=None,
                      help="tokenizer directory counting --max_context_tokens (default: the "
                           "Qwen3 tokenizer; loaded only when a context may be too long)")
  args = parser.parse_args(argv)
  if args.preset:
    split = protocol.OFFICIAL_SPLITS[args.preset]
    args.dataset = args.dataset or split.dataset
    args.limit = split.questions if args.limit is None else args.limit
    args.max_contexts = split.max_contexts if args.max_contexts is None else args.max_contexts
  if args.dataset is None:
    parser.error("give --dataset or --preset")
  return args


def _lazy_token_counter(path: str | None) -> Callable[[str], int]:
  """Counts tokens with the tokenizer at `path`, loaded on the first call."""
  @functools.cache
  def tokenizer():
    try:
      return tokenizer_lib.load_tokenizer(path)
    except (OSError, ValueError) as e:
      raise multihop.DataError(f"--tokenizer: {e}; pass --tokenizer DIR, or "
                               "--max_context_tokens 0 to build without the middle cut") from e

  return lambda text: len(tokenizer().encode(text, add_special_tokens=False))


def main(argv: Sequence[str] | None = None) -> int:
  args = _parse_args(argv)
  try:
    samples = multihop.read_dataset(args.dataset, args.input)
    print(f"read {len(samples)} questions from {args.input} ({args.dataset})")
    selected = samples[:args.limit] if args.limit is not None else samples
    if args.protocol == "official":
      contexts = protocol.iter_contexts(
          selected, args.num_docs, args.seed, pool=samples, max_questions=args.max_questions,
          max_contexts=args.max_contexts,
          count_tokens=(_lazy_token_counter(args.tokenizer) if args.max_context_tokens
                        else None),
          max_context_tokens=args.max_context_tokens or protocol.MAX_CONTEXT_TOKENS)
    else:
      contexts = multihop.iter_long_contexts(selected, args.num_docs, args.seed,
                                             args.questions_per_context, pool=samples)
    summary = _Summary()
    multihop.save_long_contexts(
        (summary.add(c) for c in tqdm.tqdm(contexts, desc="building contexts", unit="ctx",
                                           file=sys.stderr, disable=len(selected) < 100)),
        args.out)
  except (multihop.DataError, ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  summary.print(args.out)
  return 0


class _Summary:
  """Sizes of the contexts written, gathered as they stream to the file."""

  def __init__(self):
    self.questions, self.documents, self.chars = [], [], []

  def add(self, context: multihop.LongContext) -> multihop.LongContext:
    self.questions.append(len(context.questions))
    self.documents.append(len(context.documents))
    self.chars.append(len(multihop.render_context(context.documents)))
    return context

  def print(self, out: str) -> None:
    questions, documents, chars = self.questions, self.documents, self.chars
    print(f"wrote {len(questions)} contexts ({sum(questions)} questions) to {out}")
    print(f"questions per context: mean {sum(questions) / len(questions):.2f}, single "
          f"{questions.count(1) / len(questions):.2f}, max {max(questions)}")
    print(f"documents per context: mean {sum(documents) / len(documents):.1f}, "
          f"min {min(documents)}, max {max(documents)}")
    print(f"characters per rendered context: mean {sum(chars) / len(chars):,.0f}, "
          f"max {max(chars):,}")


if __name__ == "__main__":
  sys.exit(main())
