"""Host values between processes travel as JSON (train/distributed.py): the episode outcomes
of a rollout survive the round trip exactly, on one process (the multi-process gathering
itself is tested in test_train_multihost.py)."""

from __future__ import annotations

import dataclasses
import json

from atommem_jax.agent import env as env_lib
from atommem_jax.agent import stats as stats_lib
from atommem_jax.train import distributed


def _outcome(episode: int) -> distributed.EpisodeOutcome:
  recorder = stats_lib.StatsRecorder(chunks=3, context_tokens=120, truncated_tokens=7)
  recorder.applied.update(create=2, read=1)
  recorder.invalid.update(missing_close_tag=1)
  recorder.store_sizes += [1, 2, 2]
  recorder.prompt_tokens += [40, 55, 61]
  result = env_lib.EpisodeResult(context_id=f"ctx-{episode}", answers=("Paris", ""),
                                 exact_match=(1.0, 0.0), f1=(1.0, 0.25), reward=0.5,
                                 stats=recorder.freeze(), trajectory=(), memories=())
  return distributed.EpisodeOutcome(episode, result, (12, 30, 7))


def test_episode_outcomes_survive_json_with_their_types():
  outcomes = [_outcome(0), _outcome(1)]
  wire = json.dumps([dataclasses.asdict(outcome) for outcome in outcomes])
  rebuilt = [distributed.from_json(distributed.EpisodeOutcome, outcome)
             for outcome in json.loads(wire)]
  assert rebuilt == outcomes  # tuples are tuples again, the stats an EpisodeStats
  assert isinstance(rebuilt[0].result.stats, stats_lib.EpisodeStats)
  assert isinstance(rebuilt[0].result.stats.store_sizes, tuple)


def test_one_process_gathers_its_own_values_unchanged():
  value = {"sft": {"exact_match": 0.25, "step": 4}}
  assert distributed.allgather_objects(value) == [value]
