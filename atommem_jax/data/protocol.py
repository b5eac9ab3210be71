"""The official AtomMem data protocol: multi-question long contexts of a benchmark split.

What the official builders (RUCBM/AtomMem taskutils/script/processing_multiquery*.py, their
HotpotQA/2Wiki/Musique.sh calls, and the verl dataset that reads their files) do:
- Consecutive questions of the split are grouped: a group holds 1 question with probability
  0.5, else 2..10 questions uniformly (each 0.5 / 9); the last group is cut at the end.
- A group's context holds every paragraph of each of its questions (HotpotQA's 10 including the
  distractors, 2Wiki's 10, MuSiQue's 20), then paragraphs drawn at random without replacement
  from all unique paragraphs of the split, up to `num_docs` (200, 400 or 800), all shuffled.
- A context longer than the reader's budget (max_chunks * chunk_size = 40 * 4000 tokens) is
  cut in the middle: its first and last halves are kept (verl's "center" truncation).
- RL trains on the HotpotQA train split (20,000 questions); evaluation reads the dev splits
  (HotpotQA 600, 2Wiki 1,000, MuSiQue 1,000 questions, of which only the first 200 contexts
  are kept), seed 42.

Where we differ, on purpose: a paragraph shared by two questions of a group appears once (the
official builder repeats it); the middle cut drops whole documents, so every kept document is
intact and the gold indices stay exact (the official one cuts tokens mid-document); each
context draws from its own generator seeded by (seed, its question ids), so a context does not
depend on which other contexts are built or in which order (the official builder draws from
one global generator across worker threads). Left as our readers have it: 2Wiki sentences are
joined with a space (the official builder reads 2Wiki with its HotpotQA reader, which glues
them together), and a MuSiQue question's gold answers include its `answer_aliases` (the
official builder keeps `answer` only, so its EM counts an alias as wrong).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Sequence

import numpy as np

from atommem_jax.data import multihop

MAX_QUESTIONS = 10
SINGLE_QUESTION_PROBABILITY = 0.5
MAX_CONTEXT_TOKENS = 40 * 4000  # the official max_chunks * chunk_size
SEED = 42
_CACHED_CHARS = 50_000  # token counts of texts up to this size (one document) are cached


@dataclasses.dataclass(frozen=True)
class Split:
  """How the official run builds one split: its benchmark, questions read, contexts kept."""

  dataset: str
  questions: int
  max_contexts: int | None = None


OFFICIAL_SPLITS = {
    "hotpotqa_train": Split("hotpotqa", 20_000),  # the RL data
    "hotpotqa_dev": Split("hotpotqa", 600),
    "2wiki_dev": Split("2wiki", 1_000),
    "musique_dev": Split("musique", 1_000, max_contexts=200),
}


def group_sizes(num_questions: int, seed: int, max_questions: int = MAX_QUESTIONS) -> list[int]:
  """Questions per context for `num_questions` consecutive questions (sums to num_questions).

  1 with probability SINGLE_QUESTION_PROBABILITY, else 2..max_questions uniformly; the last
  size is cut so that the sizes add up.
  """
  if num_questions < 0 or max_questions < 1:
    raise ValueError(f"need num_questions >= 0 and max_questions >= 1; got {num_questions}, "
                     f"{max_questions}")
  choices = np.arange(1, max_questions + 1)
  weights = np.full(max_questions, (1 - SINGLE_QUESTION_PROBABILITY) / max(max_questions - 1, 1))
  weights[0] = SINGLE_QUESTION_PROBABILITY if max_questions > 1 else 1.0
  rng = np.random.default_rng([seed, 0x67726F7570])  # "group": apart from the contexts' draws
  sizes, total = [], 0
  while total < num_questions:
    size = min(int(rng.choice(choices, p=weights)), num_questions - total)
    sizes.append(size)
    total += size
  return sizes


def iter_contexts(samples: Sequence[multihop.QASample], num_docs: int, seed: int = SEED, *,
                  pool: Sequence[multihop.QASample] | None = None,
                  max_questions: int = MAX_QUESTIONS, max_contexts: int | None = None,
                  count_tokens: Callable[[str], int] | None = None,
                  max_context_tokens: int = MAX_CONTEXT_TOKENS) -> Iterator[multihop.LongContext]:
  """Yields the official contexts of `samples` (consecutive questions, grouped).

  pool: the samples whose paragraphs pad the contexts (default `samples`; pass the whole split
    when `samples` is a part of it). A group whose own paragraphs outnumber `num_docs` keeps
    them all, unpadded.
  max_contexts: keep the first contexts only (the official MuSiQue dev cap is 200).
  count_tokens: tokens of a text, for the middle cut at `max_context_tokens`; None: no cut.
    Tokens are counted only for contexts whose rendered UTF-8 bytes exceed the budget (a
    byte-level BPE token covers at least one byte).
  """
  if num_docs < 1 or seed < 0 or max_context_tokens < 1:
    raise ValueError(f"need num_docs >= 1, seed >= 0 and max_context_tokens >= 1; got "
                     f"{num_docs}, {seed}, {max_context_tokens}")
  pool_documents = tuple(sorted({d for s in (pool if pool is not None else samples)
                                 for d in s.documents}, key=lambda d: (d.title, d.text)))
  pool_index = {document: i for i, document in enumerate(pool_documents)}
  sizes = group_sizes(len(samples), seed, max_questions)
  if max_contexts is not None:
    sizes = sizes[:max_contexts]
  block_counts: dict[str, int] = {}

  def cached_count(text: str) -> int:  # documents recur across contexts: count each once
    if len(text) > _CACHED_CHARS:
      return count_tokens(text)
    if text not in block_counts:
      block_counts[text] = count_tokens(text)
    return block_counts[text]

  start = 0
  for size in sizes:
    group = samples[start:start + size]
    start += size
    own = []
    for sample in group:
      missing = [d.title for d in sample.documents if d not in pool_index]
      if missing:
        raise ValueError(f"sample {sample.id}: paragraphs {missing[:3]} are not in the pool; "
                         "pass a pool that contains the samples")
      own += [pool_index[d] for d in sample.documents]
    context = _context(group, list(dict.fromkeys(own)), pool_documents, pool_index, num_docs,
                       seed)
    if count_tokens is not None:
      context = truncate_middle(context, cached_count, max_context_tokens)
    yield context


def _context(group: Sequence[multihop.QASample], own: list[int],
             pool_documents: Sequence[multihop.Document],
             pool_index: dict[multihop.Document, int], num_docs: int,
             seed: int) -> multihop.LongContext:
  context_id = "+".join(sample.id for sample in group)
  rng = np.random.default_rng([seed, multihop.stable_hash(context_id)])
  num_padding = max(min(num_docs, len(pool_documents)) - len(own), 0)
  # Draw enough that, after removing the group's own paragraphs, num_padding remain.
  drawn = rng.choice(len(pool_documents), size=min(num_padding + len(own), len(pool_documents)),
                     replace=False)
  own_set = set(own)
  chosen = own + [int(i) for i in drawn if int(i) not in own_set][:num_padding]
  order = rng.permutation(len(chosen))
  documents = tuple(pool_documents[chosen[j]] for j in order)
  position = {document: k for k, document in enumerate(documents)}
  return multihop.LongContext(
      id=context_id,
      dataset="+".join(dict.fromkeys(sample.dataset for sample in group)),
      questions=tuple(sample.question for sample in group),
      documents=documents,
      gold_indices=tuple(tuple(sorted(position[sample.documents[i]]
                                      for i in sample.gold_indices)) for sample in group),
      seed=seed,
      num_docs=num_docs,
  )


def truncate_middle(context: multihop.LongContext, count_tokens: Callable[[str], int],
                    max_tokens: int) -> multihop.LongContext:
  """Drops whole documents from the middle until the rendered context has <= max_tokens.

  Keeps the longest head of documents within half the budget and the longest tail within the
  rest (verl's "center" truncation, at document granularity); gold indices of dropped
  documents are dropped. `count_tokens` counts the tokens of a text.

  Documents are counted one by one (a caller caches them); their sum plus one token per blank
  line bounds the whole from above (BPE merges across a join only shorten it: 0.7% on
  800-document HotpotQA contexts with the Qwen3 tokenizer), so only a context over the budget
  by that bound is tokenized whole, and a cut one is checked whole.
  """
  rendered = multihop.render_context(context.documents)
  if len(rendered.encode("utf-8")) <= max_tokens:
    return context
  blocks = [count_tokens(f"Document {i}:\n{d.title}\n{d.text}") + 1  # + the blank line
            for i, d in enumerate(context.documents, start=1)]
  if sum(blocks) - 1 <= max_tokens or count_tokens(rendered) <= max_tokens:
    return context
  head = _prefix_within(blocks, max_tokens // 2)
  tail = _prefix_within(blocks[head:][::-1], max_tokens - sum(blocks[:head]))
  while True:
    kept = list(range(head)) + list(range(len(blocks) - tail, len(blocks)))
    documents = tuple(context.documents[i] for i in kept)
    if count_tokens(multihop.render_context(documents)) <= max_tokens or not kept:
      break
    if tail >= head:  # the estimate ignored merges across blocks: drop one more
      tail -= 1
    else:
      head -= 1
  new_index = {old: new for new, old in enumerate(kept)}
  return dataclasses.replace(
      context, documents=documents,
      gold_indices=tuple(tuple(new_index[i] for i in gold if i in new_index)
                         for gold in context.gold_indices))


def _prefix_within(costs: Sequence[int], budget: int) -> int:
  """How many leading costs fit in `budget`."""
  total = 0
  for count, cost in enumerate(costs):
    total += cost
    if total > budget:
      return count
  return len(costs)
