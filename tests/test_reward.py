"""Reward: normalisation and F1 against the official HotpotQA/SQuAD script text, hand cases."""

from __future__ import annotations

import collections
import re
import string

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import pytest

from atommem_jax.agent import reward


# --- Reference: the official HotpotQA evaluation script (hotpot_evaluate_v1.py), as published.
def official_normalize_answer(s):
  def remove_articles(text):
    return re.sub(r"\b(a|an|the)\b", " ", text)

  def white_space_fix(text):
    return " ".join(text.split())

  def remove_punc(text):
    exclude = set(string.punctuation)
    return "".join(ch for ch in text if ch not in exclude)

  def lower(text):
    return text.lower()

  return white_space_fix(remove_articles(remove_punc(lower(s))))


def official_f1_score(prediction, ground_truth):
  normalized_prediction = official_normalize_answer(prediction)
  normalized_ground_truth = official_normalize_answer(ground_truth)
  zero_metric = (0, 0, 0)
  if (normalized_prediction in ["yes", "no", "noanswer"]
      and normalized_prediction != normalized_ground_truth):
    return zero_metric
  if (normalized_ground_truth in ["yes", "no", "noanswer"]
      and normalized_prediction != normalized_ground_truth):
    return zero_metric
  prediction_tokens = normalized_prediction.split()
  ground_truth_tokens = normalized_ground_truth.split()
  common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
  num_same = sum(common.values())
  if num_same == 0:
    return zero_metric
  precision = 1.0 * num_same / len(prediction_tokens)
  recall = 1.0 * num_same / len(ground_truth_tokens)
  f1 = (2 * precision * recall) / (precision + recall)
  return f1, precision, recall


def official_exact_match_score(prediction, ground_truth):
  return official_normalize_answer(prediction) == official_normalize_answer(ground_truth)
# --- End of reference.


_PIECES = st.sampled_from([
    "a", "an", "the", "The", "THE", "A", "An", "apple", "theatre", "and", "yes", "no",
    "noanswer", " ", "  ", "\t", "\n", "\u00a0", "\u2003", ".", ",", "'", '"', "-", "_",
    "(", ")", "!", "?", "$", "%", "\u2013", "\u00e9", "\u00c9", "\u0130", "\u00df", "1",
    "42", "\u00bf", "\u3002", "an.", "the-", "'the'",
])
_ANSWERS = st.one_of(st.lists(_PIECES, max_size=12).map("".join), st.text(max_size=30))


@settings(max_examples=400, deadline=None)
@given(_ANSWERS)
def test_normalize_matches_official_script(text):
  assert reward.normalize_answer(text) == official_normalize_answer(text)


@settings(max_examples=300, deadline=None)
@given(_ANSWERS, _ANSWERS)
def test_f1_and_em_match_official_script(prediction, gold):
  assert reward.f1_score(prediction, [gold]) == pytest.approx(
      official_f1_score(prediction, gold)[0])
  assert reward.exact_match(prediction, [gold]) == float(
      official_exact_match_score(prediction, gold))


@pytest.mark.parametrize("prediction,golds,expected", [
    ("The Eiffel Tower", ["Eiffel Tower"], 1.0),
    ("eiffel tower.", ["the Eiffel  Tower"], 1.0),
    ("Rush", ["rush!"], 1.0),
    ("Paris, France", ["Paris"], 0.0),
    ("NYC", ["New York City", "NYC"], 1.0),  # any alias
    ("an apple", ["apple"], 1.0),
    ("theatre", ["atre"], 0.0),  # only whole-word articles go
    ("yes", ["Yes."], 1.0),
    (None, ["anything"], 0.0),
    ("x", [], 0.0),
])
def test_exact_match_hand_cases(prediction, golds, expected):
  assert reward.exact_match(prediction, golds) == expected


def test_f1_hand_cases():
  # 2 common tokens; precision 2/3, recall 2/2 -> F1 0.8.
  assert reward.f1_score("Barack Obama Jr", ["the Barack Obama"]) == pytest.approx(0.8)
  # Best over aliases.
  assert reward.f1_score("New York", ["Los Angeles", "New York City"]) == pytest.approx(0.8)
  # yes/no/noanswer: no partial credit.
  assert reward.f1_score("yes it is", ["yes"]) == 0.0
  assert reward.f1_score("no", ["no way"]) == 0.0
  assert reward.f1_score("No.", ["no"]) == 1.0
  assert reward.f1_score("", ["something"]) == 0.0


@pytest.mark.parametrize("text,expected", [
    (r"\boxed{Paris}", "Paris"),
    (r"first \boxed{Rome} then \boxed{ Paris } final", "Paris"),  # last wins, stripped
    (r"\boxed{\text{New York}}", r"\text{New York}"),  # nested braces
    (r"\boxed{a{b{c}}d}", "a{b{c}}d"),
    (r"\boxed{x} and \boxed{unclosed", "x"),  # an unclosed last one is skipped
    (r"\boxed{\}}", r"\}"),  # escaped brace does not close
    (r"\boxed{\boxed{a}}", r"\boxed{a}"),  # inner boxed belongs to the outer content
    ("no box here", None),
    (r"\boxed{", None),
    (r"\boxed{}", ""),
])
def test_extract_boxed(text, expected):
  assert reward.extract_boxed(text) == expected


def _extract_boxed_by_rescanning(text):
  """Reference: from every \\boxed{ in turn, scan forward for its closing brace (quadratic)."""
  found, start = None, text.find("\\boxed{")
  while start != -1:
    pos, depth = start + len("\\boxed{"), 1
    while pos < len(text):
      if text[pos] == "\\":
        pos += 2
        continue
      depth += {"{": 1, "}": -1}.get(text[pos], 0)
      if depth == 0:
        break
      pos += 1
    if depth:
      start = text.find("\\boxed{", start + len("\\boxed{"))
      continue
    found = text[start + len("\\boxed{"):pos].strip()
    start = text.find("\\boxed{", pos + 1)
  return found


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(["\\boxed{", "\\boxed", "{", "}", "\\", "\\{", "\\}",
                                 "a", " ", "\\\\boxed{", "x}"]), max_size=40).map("".join))
def test_extract_boxed_equals_rescanning_from_every_box(text):
  assert reward.extract_boxed(text) == _extract_boxed_by_rescanning(text)


def test_context_reward_is_mean_em():
  golds = [["Paris"], ["Rush", "Rush (band)"], ["yes"], ["1998"]]
  predictions = ["paris", "Rush (band)", "no", None]
  assert reward.context_reward(predictions, golds) == pytest.approx(0.5)


def test_context_reward_rejects_mismatched_lengths():
  with pytest.raises(ValueError, match="1 predictions for 2 questions"):
    reward.context_reward(["a"], [["a"], ["b"]])


def test_store_size_penalty():
  assert reward.store_size_penalty(100) == 0.0  # off by default
  assert reward.store_size_penalty(30, coef=0.01, free_size=20) == pytest.approx(0.1)
  assert reward.store_size_penalty(10, coef=0.01, free_size=20) == 0.0


@pytest.mark.parametrize("golds,texts,expected", [
    (["Pari"], ["Fime: Fime was born in Pari."], 1.0),
    (["Pari"], ["Fime was born in Paris."], 0.0),  # whole words only
    (["Pari"], ["Nothing here.", "PARI!"], 1.0),  # any text; case and punctuation normalised
    (["The Beatles"], ["a song by beatles"], 1.0),  # articles dropped on both sides
    (["New York"], ["York, New"], 0.0),  # the words in order
    (["", "Kimo"], ["Kimo sells lamps."], 1.0),  # another alias matches
    ([""], ["anything"], 0.0),  # an empty gold never matches
    (["Pari"], [], 0.0),
])
def test_answer_in_texts(golds, texts, expected):
  assert reward.answer_in_texts(golds, texts) == expected
