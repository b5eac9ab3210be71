"""The jitted episode loop against host-driven references: `run_episodes` with a scripted
policy, and the sampler called step by step; sharded and multi-process runs; one compile."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atommem_jax.agent import env as env_lib
from atommem_jax.agent import oracle
from atommem_jax.data import synthetic
from atommem_jax.data.tokenizer import load_tokenizer
from atommem_jax.memory.embed import HashingEmbedder
from atommem_jax.model import config as config_lib
from atommem_jax.model import qwen3
from atommem_jax.model import sharding
from atommem_jax.rollout import episode
from atommem_jax.rollout import host
from atommem_jax.rollout import sampler

_TINY_TEMPLATE = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny_prompt.txt")
ENV_CONFIG = env_lib.EnvConfig(chunk_tokens=128, chunk_overlap=8, max_chunks=8, top_k=3,
                               max_retrieved_tokens=128, max_queries_per_question=1,
                               store_backend="exact", prompt_template=_TINY_TEMPLATE)
# With the compact template, read prompts of these contexts have 210-240 tokens and answer
# prompts 135-160 (oracle): the loop switches between both buckets within one run.
BUCKETS = (192, 256)
MODEL = config_lib.preset("micro-qwen-vocab")
MESHES = {"data8": {"data": 8, "fsdp": 1, "tensor": 1},
          "data2_fsdp2_tensor2": {"data": 2, "fsdp": 2, "tensor": 2}}


@functools.lru_cache(maxsize=None)
def _tokenizer():
  return load_tokenizer()


@functools.lru_cache(maxsize=None)
def _contexts(count: int, seed: int = 0, questions: int = 2):
  return tuple(synthetic.generate_synthetic(
      count, seed=seed, num_entities=4, num_cities=3, num_docs=6, hops=2, num_updates=1,
      doc_length=4, questions_per_context=questions))


def _mesh(name: str | None):
  if name is None:
    return None
  return sharding.make_mesh(MESHES[name])


def _scripted_loop(mesh=None, batch_size=8, buckets=(1024,), make_policy=oracle.OraclePolicy):
  tokenizer = _tokenizer()
  sampling = sampler.SamplingConfig(max_new_tokens=512, greedy=True,
                                    pad_id=tokenizer.pad_token_id)
  return episode.EpisodeLoop(None, tokenizer, ENV_CONFIG, HashingEmbedder(256),
                             batch_size=batch_size, prompt_buckets=buckets, sampling=sampling,
                             mesh=mesh, make_policy=make_policy)


def _reference(contexts):
  env = env_lib.MemoryEnv(ENV_CONFIG, _tokenizer(), HashingEmbedder(256))
  return oracle.run_episodes(env, oracle.OraclePolicy(), contexts)


@pytest.mark.parametrize("mesh_name", [None, "data8", "data2_fsdp2_tensor2"])
def test_scripted_loop_makes_the_transitions_of_run_episodes(mesh_name):
  contexts = _contexts(5)  # 5 episodes on 8 shards: some shards hold none
  rollout = _scripted_loop(_mesh(mesh_name)).run(None, contexts, jax.random.key(0))
  reference = _reference(contexts)
  assert [r.episode for r in rollout.episodes] == list(range(5))
  assert [r.result for r in rollout.episodes] == reference  # trajectories, answers, stats
  assert rollout.rewards.shape == (5, 1)
  np.testing.assert_array_equal(rollout.rewards[:, 0], [r.reward for r in reference])
  assert rollout.steps == max(len(r.trajectory) for r in reference)
  assert np.mean([em for r in reference for em in r.exact_match]) >= 0.8
  end = _tokenizer().eos_token_id
  for episode_rollout in rollout.episodes:
    for turn, ids in zip(episode_rollout.result.trajectory, episode_rollout.response_token_ids):
      assert ids[-1] == end
      assert _tokenizer().decode(list(ids[:-1])) == turn.response


def test_groups_give_every_sample_its_own_store():
  contexts = _contexts(2)
  rollout = _scripted_loop(batch_size=6).run(None, contexts, jax.random.key(0), group_size=3)
  reference = _reference(contexts)
  assert rollout.rewards.shape == (2, 3)
  groups = rollout.groups()
  assert [[r.episode for r in group] for group in groups] == [[0, 1, 2], [3, 4, 5]]
  for group, expected in zip(groups, reference):
    for member in group:
      assert member.result == expected
  examples = groups[0][0].examples(advantage=0.5)
  trajectory = groups[0][0].result.trajectory
  assert len(examples) == len(trajectory)
  assert examples[0].prompt_ids == trajectory[0].prompt_token_ids
  assert examples[0].advantage == 0.5


class _FailingPolicy(oracle.OraclePolicy):
  """The oracle, until its third step: then it raises."""

  def __init__(self):
    super().__init__()
    self.calls = 0

  def act(self, observations):
    self.calls += 1
    if self.calls == 3:
      raise RuntimeError("scripted policy failed at its third step")
    return super().act(observations)


def test_a_host_error_stops_the_loop_and_is_raised_with_its_message():
  loop = _scripted_loop(make_policy=_FailingPolicy)
  with pytest.raises(RuntimeError, match="failed at its third step"):
    loop.run(None, _contexts(2), jax.random.key(0))
  with pytest.raises(ValueError, match="1 to 8 episodes"):
    loop.run(None, _contexts(5), jax.random.key(0), group_size=2)


def test_prompts_over_the_largest_bucket_are_cut_not_fatal():
  """The loop lowers the environment's prompt budget to its largest bucket: a prompt that
  would not fit is cut (oldest memories first, ...) and counted; the episodes finish."""
  rollout = _scripted_loop(buckets=(160,)).run(None, _contexts(2), jax.random.key(0))
  for episode_rollout in rollout.episodes:
    stats = episode_rollout.result.stats
    assert stats.prompt_cuts > 0 and max(stats.prompt_tokens) <= 160
    assert all(len(turn.prompt_token_ids) <= 160
               for turn in episode_rollout.result.trajectory)
    assert len(episode_rollout.result.trajectory) == stats.steps > 0


@functools.lru_cache(maxsize=None)
def _params():
  """Random weights scaled up (as tests/test_sampler.py does) so greedy paths vary."""
  params = qwen3.init_params(MODEL, jax.random.key(0))
  return jax.tree.map(lambda p: p * 4 if p.ndim > 1 else p, params)


def _sampling():
  tokenizer = _tokenizer()
  return sampler.SamplingConfig(max_new_tokens=4, greedy=True, pad_id=tokenizer.pad_token_id,
                                eos_ids=host.eos_token_ids(tokenizer))


@functools.lru_cache(maxsize=None)
def _model_loop(mesh_name: str | None):
  return episode.EpisodeLoop(MODEL, _tokenizer(), ENV_CONFIG, HashingEmbedder(256),
                             batch_size=8, prompt_buckets=BUCKETS, sampling=_sampling(),
                             mesh=_mesh(mesh_name))


def _host_driven(contexts):
  """The reference: the jitted sampler called once per step from a Python loop."""
  tokenizer, sampling = _tokenizer(), _sampling()
  env = env_lib.MemoryEnv(ENV_CONFIG, tokenizer, HashingEmbedder(256))
  observations = env.reset(contexts)
  buckets_used = []
  while observations:
    prompts = [o.prompt_token_ids for o in observations]
    length = sampler.bucket_length(max(map(len, prompts)), BUCKETS)
    buckets_used.append(length)
    tokens, mask = sampler.left_pad(prompts, length, tokenizer.pad_token_id)
    out = sampler.generate(MODEL, _params(), jnp.asarray(tokens), jnp.asarray(mask),
                           jax.random.key(0), sampling)
    responses, logprobs = [], []
    for row in range(len(observations)):
      ids = np.asarray(out.tokens[row, :int(out.lengths[row])]).tolist()
      logprobs.append(np.asarray(out.logprobs[row, :len(ids)]).tolist())
      if ids and ids[-1] in sampling.eos_ids:
        ids = ids[:-1]
      responses.append(tokenizer.decode(ids))
    observations = env.step(responses, logprobs)
  return env.results(), buckets_used


def _without_logprobs(result):
  return dataclasses.replace(result, trajectory=tuple(
      dataclasses.replace(turn, response_logprobs=None) for turn in result.trajectory))


def _assert_same_episodes(results, expected):
  assert [_without_logprobs(r) for r in results] == [_without_logprobs(r) for r in expected]
  for result, reference in zip(results, expected):
    for turn, reference_turn in zip(result.trajectory, reference.trajectory):
      np.testing.assert_allclose(turn.response_logprobs, reference_turn.response_logprobs,
                                 atol=1e-4)


def test_greedy_loop_equals_the_sampler_called_step_by_step_and_compiles_once():
  loop = _model_loop(None)
  buckets_used = set()
  for contexts in (_contexts(3), _contexts(2, seed=5)):
    expected, steps_buckets = _host_driven(contexts)
    buckets_used.update(steps_buckets)
    rollout = loop.run(_params(), contexts, jax.random.key(0))
    _assert_same_episodes([r.result for r in rollout.episodes], expected)
    assert any(r.result.trajectory[0].response for r in rollout.episodes)
    for r in rollout.episodes:
      for turn, ids in zip(r.result.trajectory, r.response_token_ids):
        assert len(ids) == len(turn.response_logprobs) >= 1
  assert buckets_used == set(BUCKETS)  # both branches of the switch ran
  assert loop.num_traces == 1
  assert loop._run._cache_size() == 1  # pylint: disable=protected-access


@pytest.mark.parametrize("mesh_name", [
    "data2_fsdp2_tensor2", pytest.param("data8", marks=pytest.mark.slow)])
def test_sharded_model_loop_equals_unsharded(mesh_name):
  contexts = _contexts(3)
  unsharded = _model_loop(None).run(_params(), contexts, jax.random.key(0))
  sharded = _model_loop(mesh_name).run(_params(), contexts, jax.random.key(0))
  _assert_same_episodes([r.result for r in sharded.episodes],
                        [r.result for r in unsharded.episodes])
  np.testing.assert_array_equal(sharded.rewards, unsharded.rewards)


_WORKER = """
import json, sys
process_id, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
sys.path.insert(0, sys.argv[4])
import test_episode as t
from atommem_jax.agent import oracle
from atommem_jax.memory.embed import HashingEmbedder
from atommem_jax.model import sharding
from atommem_jax.rollout import episode, sampler

seen = set()

class Watched(oracle.OraclePolicy):
  def act(self, observations):
    seen.update(o.context_id for o in observations)
    return super().act(observations)

tokenizer = t._tokenizer()
mesh = sharding.make_mesh({"data": 4, "fsdp": 1, "tensor": 2})
loop = episode.EpisodeLoop(
    None, tokenizer, t.ENV_CONFIG, HashingEmbedder(256), batch_size=8,
    prompt_buckets=(1024,), mesh=mesh, make_policy=Watched,
    sampling=sampler.SamplingConfig(max_new_tokens=512, pad_id=tokenizer.pad_token_id))
rollout = loop.run(None, t._contexts(6), jax.random.key(0))
json.dump({"shards": sorted(loop.registry.shards), "seen": sorted(seen),
           "episodes": [r.episode for r in rollout.episodes],
           "answers": [list(r.result.answers) for r in rollout.episodes],
           "responses": [[turn.response for turn in r.result.trajectory]
                         for r in rollout.episodes],
           "rewards": rollout.rewards.tolist()}, open(out, "w"))
"""


@pytest.mark.multiprocess
def test_two_processes_each_step_only_their_own_episodes(tmp_path):
  script = tmp_path / "worker.py"
  script.write_text(_WORKER)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  workers = [subprocess.Popen([sys.executable, str(script), str(i), str(port),
                               str(tmp_path / f"out{i}.json"), tests_dir], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
  outputs = [w.communicate(timeout=180)[0] for w in workers]
  assert [w.returncode for w in workers] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  results = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2)]
  contexts = _contexts(6)
  reference = _reference(contexts)
  # 8 rows on 4 shards: shard s holds episodes 2s and 2s + 1 (episodes 6, 7 do not exist).
  assert sorted(results[0]["shards"] + results[1]["shards"]) == [0, 1, 2, 3]
  for result in results:
    assert result["shards"]
    assert result["episodes"] == [e for s in result["shards"] for e in (2 * s, 2 * s + 1)
                                  if e < 6]
    assert result["seen"] == sorted(contexts[e].id for e in result["episodes"])
    for index, answers, responses in zip(result["episodes"], result["answers"],
                                         result["responses"]):
      assert answers == list(reference[index].answers)
      assert responses == [turn.response for turn in reference[index].trajectory]
    assert result["rewards"] == [[r.reward] for r in reference]
