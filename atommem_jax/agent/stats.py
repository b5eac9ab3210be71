"""Per-episode operation statistics of the AtomMem environment, and their batch means."""

from __future__ import annotations

import collections
import dataclasses
from typing import Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class EpisodeStats:
  """What one episode did.

  Attributes:
    creates, reads, updates, deletes: store actions applied (invalid ones are not counted).
    scratchpad_rewrites: scratchpad rewrites applied.
    invalid: invalid actions by problem kind (parser problems, "query_limit", "store_full").
    store_sizes: store size after every step.
    prompt_tokens: prompt length in tokens at every step.
    steps: responses consumed.
    chunks: chunks of the context (after truncation).
    context_tokens: tokens of the rendered context before truncation.
    truncated_tokens: tokens dropped past `max_chunks` chunks.
    hit_step_limit: the episode was ended by its turn limit.
    questions_skipped: questions skipped by a Read over the query limit.
    prompt_cuts: steps whose prompt was cut to `EnvConfig.max_prompt_tokens`.
    memories_cut: retrieved memories left out of prompts for that budget.
  """
  creates: int
  reads: int
  updates: int
  deletes: int
  scratchpad_rewrites: int
  invalid: Mapping[str, int]
  store_sizes: tuple[int, ...]
  prompt_tokens: tuple[int, ...]
  steps: int
  chunks: int
  context_tokens: int
  truncated_tokens: int
  hit_step_limit: bool
  questions_skipped: int = 0
  prompt_cuts: int = 0
  memories_cut: int = 0

  @property
  def num_invalid(self) -> int:
    return sum(self.invalid.values())


class StatsRecorder:
  """Mutable counters of one running episode; `freeze` gives its `EpisodeStats`."""

  def __init__(self, *, chunks: int, context_tokens: int, truncated_tokens: int):
    self.applied = collections.Counter()
    self.invalid = collections.Counter()
    self.store_sizes: list[int] = []
    self.prompt_tokens: list[int] = []
    self.hit_step_limit = False
    self.questions_skipped = 0
    self.prompt_cuts = 0
    self.memories_cut = 0
    self._chunks = chunks
    self._context_tokens = context_tokens
    self._truncated_tokens = truncated_tokens

  def freeze(self) -> EpisodeStats:
    return EpisodeStats(
        creates=self.applied["create"], reads=self.applied["read"],
        updates=self.applied["update"], deletes=self.applied["delete"],
        scratchpad_rewrites=self.applied["scratchpad"], invalid=dict(self.invalid),
        store_sizes=tuple(self.store_sizes), prompt_tokens=tuple(self.prompt_tokens),
        steps=len(self.store_sizes), chunks=self._chunks,
        context_tokens=self._context_tokens, truncated_tokens=self._truncated_tokens,
        hit_step_limit=self.hit_step_limit, questions_skipped=self.questions_skipped,
        prompt_cuts=self.prompt_cuts, memories_cut=self.memories_cut)


def summarize(stats: Sequence[EpisodeStats]) -> dict[str, float]:
  """Means over episodes, for logging: per-episode action counts, final store size, steps,
  invalid actions (total and by kind), skipped questions, prompt cuts, mean prompt tokens,
  step-limit and truncation rates."""
  if not stats:
    return {}
  count = len(stats)
  summary = {
      name: sum(getattr(s, name) for s in stats) / count
      for name in ("creates", "reads", "updates", "deletes", "scratchpad_rewrites", "steps",
                   "chunks", "truncated_tokens", "num_invalid", "questions_skipped",
                   "prompt_cuts", "memories_cut")
  }
  summary["final_store_size"] = sum(s.store_sizes[-1] if s.store_sizes else 0
                                    for s in stats) / count
  summary["prompt_tokens"] = (sum(sum(s.prompt_tokens) for s in stats)
                              / max(sum(len(s.prompt_tokens) for s in stats), 1))
  summary["hit_step_limit"] = sum(s.hit_step_limit for s in stats) / count
  summary["truncated"] = sum(s.truncated_tokens > 0 for s in stats) / count
  for kind in sorted({kind for s in stats for kind in s.invalid}):
    summary[f"invalid/{kind}"] = sum(s.invalid.get(kind, 0) for s in stats) / count
  return summary
