"""GRPO's dynamic sampling (grpo.max_draws): which groups a step draws and trains on."""

from __future__ import annotations

import types

import jax
import ml_collections
import numpy as np
import pytest

from atommem_jax import config_lib
from atommem_jax.rollout import episode
from atommem_jax.train import contexts as contexts_lib
from atommem_jax.train import stages

GROUP = 3
QUESTIONS = 2
NUM_CONTEXTS = 40


class _FakeLoop:
  """Stands in for `EpisodeLoop.run`: each context's group gets fixed rewards (context c:
  all 0 when c % 3 == 0, all 1 when c % 3 == 1, mixed [1, 0, 1] otherwise)."""

  def __init__(self):
    self.calls = []

  def run(self, params, contexts, rng, *, group_size):
    assert params == "params" and group_size == GROUP
    self.calls.append((tuple(contexts), np.asarray(jax.random.key_data(rng)).tolist()))
    rewards = np.array([[0.0] * GROUP if c % 3 == 0 else [1.0] * GROUP if c % 3 == 1
                        else [1.0, 0.0, 1.0] for c in contexts])
    episodes = tuple(episode.EpisodeRollout(episode=i, result=(c, i % GROUP),
                                            response_token_ids=())
                     for i, c in enumerate(c for c in contexts for _ in range(GROUP)))
    return episode.Rollout(episodes=episodes, rewards=rewards, steps=4, seconds=1.0,
                           callback_seconds=0.0)


def _job(max_draws: int, seed: int = 5):
  grpo = ml_collections.ConfigDict(dict(max_draws=max_draws, questions_per_batch=QUESTIONS,
                                        group_size=GROUP))
  return types.SimpleNamespace(config=ml_collections.ConfigDict(dict(seed=seed, grpo=grpo)))


def _mixed(c: int) -> bool:
  return c % 3 == 2


def _draws(step: int, count: int, seed: int = 5) -> list[list[int]]:
  return [contexts_lib.grpo_context_indices(NUM_CONTEXTS, QUESTIONS, seed, step, d).tolist()
          for d in range(count)]


def _step_with_draws(needed_mixed: int, max_draws: int) -> tuple[int, list[list[int]]]:
  """A step whose first draws give fewer than `needed_mixed` mixed groups before the last."""
  for step in range(200):
    draws = _draws(step, max_draws)
    counts = np.cumsum([sum(_mixed(c) for c in draw) for draw in draws])
    if counts[0] < needed_mixed and counts[-1] >= needed_mixed and counts[-2] < needed_mixed:
      return step, draws
  raise AssertionError("no such step in 200")


def test_one_draw_is_plain_grpo():
  loop = _FakeLoop()
  key = jax.random.key(7)
  trained, drawn = stages._grpo_rollout(_job(1), loop, "params", list(range(NUM_CONTEXTS)),
                                        3, key)
  assert trained is drawn
  assert [list(contexts) for contexts, _ in loop.calls] == _draws(3, 1)
  assert loop.calls[0][1] == np.asarray(jax.random.key_data(key)).tolist()


def test_draws_until_enough_groups_differ_then_trains_on_those_first():
  step, draws = _step_with_draws(QUESTIONS, 3)
  loop = _FakeLoop()
  key = jax.random.key(7)
  trained, drawn = stages._grpo_rollout(_job(3), loop, "params", list(range(NUM_CONTEXTS)),
                                        step, key)
  assert [list(contexts) for contexts, _ in loop.calls] == draws  # stopped at the third
  assert loop.calls[1][1] == np.asarray(jax.random.key_data(jax.random.fold_in(key, 1))).tolist()
  flat = [c for draw in draws for c in draw]
  mixed = [c for c in flat if _mixed(c)]
  # The trained groups: the first QUESTIONS mixed ones, renumbered 0.. in that order.
  assert [e.result[0] for e in trained.episodes[::GROUP]] == mixed[:QUESTIONS]
  assert [e.episode for e in trained.episodes] == list(range(QUESTIONS * GROUP))
  assert [e.result[1] for e in trained.episodes] == list(range(GROUP)) * QUESTIONS
  np.testing.assert_array_equal(trained.rewards, [[1.0, 0.0, 1.0]] * QUESTIONS)
  # Every drawn group is reported, in draw order.
  assert [e.result[0] for e in drawn.episodes[::GROUP]] == flat
  assert drawn.rewards.shape == (len(flat), GROUP) and drawn.seconds == 3.0


def test_too_few_differing_groups_are_filled_with_the_others_in_draw_order():
  for step in range(200):
    draws = _draws(step, 2)
    if sum(_mixed(c) for draw in draws for c in draw) == 1:
      break
  else:
    raise AssertionError("no step with one mixed group in two draws")
  loop = _FakeLoop()
  trained, _ = stages._grpo_rollout(_job(2), loop, "params", list(range(NUM_CONTEXTS)), step,
                                    jax.random.key(0))
  flat = [c for draw in draws for c in draw]
  expected = [c for c in flat if _mixed(c)] + [c for c in flat if not _mixed(c)][:1]
  assert [e.result[0] for e in trained.episodes[::GROUP]] == expected
  assert len(loop.calls) == 2


def test_draws_of_a_step_differ_and_draw_zero_is_unchanged():
  first = contexts_lib.grpo_context_indices(4096, 4, 0, 0)
  np.testing.assert_array_equal(first, contexts_lib.grpo_context_indices(4096, 4, 0, 0, 0))
  assert set(first.tolist()).isdisjoint(
      contexts_lib.grpo_context_indices(4096, 4, 0, 0, 1).tolist())


def test_select_groups_refuses_mismatched_group_sizes():
  loop = _FakeLoop()
  a = loop.run("params", [0, 1], jax.random.key(0), group_size=GROUP)
  b = episode.Rollout(episodes=(), rewards=np.zeros((1, 2)), steps=1, seconds=0.0,
                      callback_seconds=0.0)
  with pytest.raises(ValueError, match="different group sizes"):
    episode.select_groups([a, b], [(0, 0), (1, 0)])


def test_max_draws_below_one_is_refused():
  c = config_lib.load_config_file("tiny")
  c.grpo.max_draws = 0
  with pytest.raises(config_lib.ConfigError, match="grpo.max_draws"):
    config_lib.validate(c)
