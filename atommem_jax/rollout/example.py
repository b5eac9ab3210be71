"""`Example`: one (prompt, response) step in tokens, what rollouts and SFT data hand to training.

It lives in the rollout layer, below train, because rollouts make it
(`host.EpisodeRollout.examples`); `train.batch` turns examples into batches (and re-exports it).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence


class Example(NamedTuple):
  """One (prompt, response) step. `old_logprobs` has one entry per response token."""

  prompt_ids: Sequence[int]
  response_ids: Sequence[int]
  advantage: float = 0.0
  old_logprobs: Sequence[float] | None = None
