"""Answer scoring: SQuAD/HotpotQA normalisation, exact match, token F1, context reward.

The reward AtomMem trains on is exact match after normalisation against any gold alias,
averaged over the questions that share one long context. `normalize_answer` reproduces
the official HotpotQA/SQuAD evaluation scripts (lower-case, drop ASCII punctuation, drop the
articles a/an/the, collapse whitespace), so our numbers compare with published ones.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Sequence

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_BOXED = re.compile(r"\\boxed\{")
_BRACE_OR_ESCAPE = re.compile(r"\\.|[{}]", re.DOTALL)
# HotpotQA's F1 gives no partial credit when either side normalises to one of these.
_EXACT_ONLY = frozenset({"yes", "no", "noanswer"})


def normalize_answer(s: str) -> str:
  """Normalises an answer the way the official SQuAD/HotpotQA scripts do."""
  text = s.lower().translate(_PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", text).split())


def extract_boxed(text: str) -> str | None:
  r"""Content of the last complete `\boxed{...}` in `text`, stripped; None if there is none.

  Braces nest (`\boxed{\text{a}}` gives `\text{a}`); a backslash escapes the next character,
  so `\{` and `\}` do not count. A `\boxed{` inside another one belongs to the outer content.
  An unclosed `\boxed{` is skipped and scanning goes on after it. Linear in `len(text)`: the
  braces are matched in one pass (escapes pair up the same way from any `\boxed{`, whose
  `{` is never escaped), then the candidates are visited left to right.
  """
  starts = [match.end() for match in _BOXED.finditer(text)]
  if not starts:
    return None
  closing = _closing_braces(text, starts[0] - 1)
  found, resume = None, 0
  for content_start in starts:
    if content_start < resume:
      continue  # inside the last complete one: part of its content
    end = closing.get(content_start - 1)
    if end is not None:
      found, resume = text[content_start:end].strip(), end + 1
  return found


def _closing_braces(text: str, begin: int) -> dict[int, int]:
  """Position of each `{` at or after `begin` -> position of the `}` that closes it."""
  closing, opened = {}, []
  for match in _BRACE_OR_ESCAPE.finditer(text, begin):
    char = match.group()
    if char == "{":
      opened.append(match.start())
    elif char == "}" and opened:
      closing[opened.pop()] = match.start()
  return closing


def exact_match(prediction: str | None, golds: Sequence[str]) -> float:
  """1.0 if the normalised prediction equals any normalised gold alias, else 0.0."""
  if prediction is None:
    return 0.0
  normalized = normalize_answer(prediction)
  return float(any(normalized == normalize_answer(gold) for gold in golds))


def f1_score(prediction: str | None, golds: Sequence[str]) -> float:
  """Token F1 of the normalised answers, best over gold aliases (HotpotQA's rules)."""
  if prediction is None:
    return 0.0
  return max((_f1_one(prediction, gold) for gold in golds), default=0.0)


def _f1_one(prediction: str, gold: str) -> float:
  predicted, expected = normalize_answer(prediction), normalize_answer(gold)
  if (predicted in _EXACT_ONLY or expected in _EXACT_ONLY) and predicted != expected:
    return 0.0
  predicted_tokens, expected_tokens = predicted.split(), expected.split()
  common = collections.Counter(predicted_tokens) & collections.Counter(expected_tokens)
  num_same = sum(common.values())
  if num_same == 0:
    return 0.0
  precision = num_same / len(predicted_tokens)
  recall = num_same / len(expected_tokens)
  return 2 * precision * recall / (precision + recall)


def answer_in_texts(golds: Sequence[str], texts: Sequence[str]) -> float:
  """1.0 if a normalised gold alias occurs, as whole words, in one of the normalised texts.

  A memory-recall measure: whether the store (or what a Read returned) holds the answer at
  all, whatever the policy then answered. Empty golds never match.
  """
  padded = [f" {normalize_answer(text)} " for text in texts]
  return float(any(f" {gold} " in text for gold in map(normalize_answer, golds) if gold
                   for text in padded))


def context_reward(predictions: Sequence[str | None],
                   golds_per_question: Sequence[Sequence[str]]) -> float:
  """Mean exact match over the questions of one context; None means not answered (0)."""
  if len(predictions) != len(golds_per_question):
    raise ValueError(f"context_reward got {len(predictions)} predictions for "
                     f"{len(golds_per_question)} questions; pass one prediction per question "
                     "(None for an unanswered one)")
  if not predictions:
    raise ValueError("context_reward needs at least one question")
  scores = [exact_match(p, golds) for p, golds in zip(predictions, golds_per_question)]
  return sum(scores) / len(scores)


def store_size_penalty(size: int, coef: float = 0.0, free_size: int = 0) -> float:
  """Penalty (to subtract from the reward) of `coef` per store entry beyond `free_size`.

  Off by default (coef 0): the paper's reward is exact match alone. It is a knob for
  discouraging an agent from hoarding memories.
  """
  return coef * max(0, size - free_size)
