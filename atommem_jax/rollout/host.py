"""Host side of the jitted episode loop: one `ShardHost` per batch shard of episodes.

A `ShardHost` owns the environment (and, for scripted runs, the policy) of the episodes in
one batch shard: it pads their prompts to the largest bucket, turns sampled tokens into
response texts, steps the environment, and keeps every turn's response token ids next to
the environment's trajectory. A `HostRegistry` holds the shards of this process and is
what the loop's `io_callback`s call, with the calling device's (shard, replica)
coordinates: only one device per shard (its owner) acts, the others get zeros.

A host error (e.g. an exception of a scripted policy) never crashes inside XLA: the
registry keeps the first exception, reports it through the error count so that the loop
stops, and `raise_error` re-raises it after the jitted call returns.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Callable, Sequence

import numpy as np

from atommem_jax.agent import env as env_lib
from atommem_jax.data.multihop import LongContext
from atommem_jax.memory.store import MemoryEntry
from atommem_jax.rollout import sampler
from atommem_jax.rollout.example import Example

_END_TOKENS = ("<|im_end|>", "<|endoftext|>")


def eos_token_ids(tokenizer) -> tuple[int, ...]:
  """Ids that end a response: the tokenizer's EOS and the ChatML end tokens it knows."""
  ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
  vocab = tokenizer.get_vocab()
  ids.update(vocab[token] for token in _END_TOKENS if token in vocab)
  if not ids:
    raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no EOS token "
                     "and no <|im_end|>; responses could never end, use a chat tokenizer")
  return tuple(sorted(ids))


@dataclasses.dataclass(frozen=True)
class EpisodeRollout:
  """One episode of a rollout: its result and the tokens behind every turn.

  Attributes:
    episode: global index in the batch given to the loop.
    result: the environment's result (answers, reward, stats, trajectory of `Turn`s with
      prompt token ids and, for model rollouts, per-token response log-probs).
    response_token_ids: per turn, the sampled ids (the end token included when sampled).
    observations, memories: per turn, what the agent saw and the store after the step;
      empty unless the loop traces (evaluation logs).
  """
  episode: int
  result: env_lib.EpisodeResult
  response_token_ids: tuple[tuple[int, ...], ...]
  observations: tuple[env_lib.Observation, ...] = ()
  memories: tuple[tuple[MemoryEntry, ...], ...] = ()

  def examples(self, advantage: float) -> list[Example]:
    """One training example per turn, each carrying the episode's advantage."""
    return [Example(turn.prompt_token_ids, ids, advantage, turn.response_logprobs)
            for turn, ids in zip(self.result.trajectory, self.response_token_ids)]


class ShardHost:
  """The episodes of one batch shard: `rows` batch rows, row i is the shard's episode i.

  Args:
    env: this shard's environment.
    tokenizer: the policy's tokenizer (decodes responses, encodes scripted ones).
    rows: batch rows of the shard; rows without an episode stay inactive.
    prompt_buckets: allowed prompt lengths, ascending; prompts are padded to the largest.
    pad_id, eos_ids: padding id and the ids that end a response.
    policy: a scripted policy (`agent.oracle.Policy`) that answers instead of the model.
    trace: keep every step's observation and the store after the step.
  """

  def __init__(self, env: env_lib.MemoryEnv, tokenizer, *, rows: int,
               prompt_buckets: Sequence[int], pad_id: int, eos_ids: Sequence[int],
               policy=None, trace: bool = False):
    self.env = env
    self.tokenizer = tokenizer
    self.rows = rows
    self.buckets = tuple(prompt_buckets)
    self.pad_id = pad_id
    self.eos_ids = frozenset(eos_ids)
    self.policy = policy
    self.trace = trace
    self.end_id = (tokenizer.eos_token_id if tokenizer.eos_token_id in self.eos_ids
                   else min(self.eos_ids))
    self._first_episode = 0
    self._observations: list[env_lib.Observation] = []
    self._response_ids: list[list[tuple[int, ...]]] = []
    self._seen: list[list[env_lib.Observation]] = []
    self._memories: list[list[tuple[MemoryEntry, ...]]] = []

  def reset(self, contexts: Sequence[LongContext], first_episode: int) -> None:
    """Starts one episode per context (at most `rows`); `first_episode` is row 0's index."""
    if len(contexts) > self.rows:
      raise ValueError(f"{len(contexts)} contexts for a shard of {self.rows} rows")
    self._first_episode = first_episode
    self._observations = self.env.reset(contexts)
    if self.policy is not None:
      self.policy.reset(contexts)
    self._response_ids = [[] for _ in contexts]
    self._seen = [[] for _ in contexts]
    self._memories = [[] for _ in contexts]

  def prompts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.int32]:
    """Prompts of the active episodes, left-padded to the largest bucket.

    Returns tokens [R, P] int32, mask [R, P] int32, active [R] bool and the index of the
    smallest bucket that holds every active prompt.
    """
    prompts: list[Sequence[int]] = [()] * self.rows
    active = np.zeros((self.rows,), bool)
    for observation in self._observations:
      prompts[observation.episode] = observation.prompt_token_ids
      active[observation.episode] = True
    longest = max((len(p) for p in prompts), default=0)
    if longest > self.buckets[-1]:
      observation = max(self._observations, key=lambda o: len(o.prompt_token_ids))
      raise ValueError(
          f"episode {self._first_episode + observation.episode} (context "
          f"{observation.context_id!r}) step {observation.step}: prompt of {longest} tokens "
          f"exceeds the largest prompt bucket {self.buckets[-1]}; the environment's "
          "max_prompt_tokens must not exceed it (EpisodeLoop lowers it to that bucket)")
    bucket = self.buckets.index(sampler.bucket_length(longest, self.buckets))
    tokens, mask = sampler.left_pad(prompts, self.buckets[-1], self.pad_id)
    return tokens, mask, active, np.int32(bucket)

  def scripted(self, max_new_tokens: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scripted policy's responses as tokens [R, M] (end token appended), zero
    log-probs [R, M] and lengths [R]; a response longer than M tokens is cut."""
    tokens = np.full((self.rows, max_new_tokens), self.pad_id, np.int32)
    lengths = np.zeros((self.rows,), np.int32)
    responses = self.policy.act(self._observations) if self._observations else []
    for observation, response in zip(self._observations, responses):
      ids = self.tokenizer.encode(response, add_special_tokens=False) + [self.end_id]
      ids = ids[:max_new_tokens]
      tokens[observation.episode, :len(ids)] = ids
      lengths[observation.episode] = len(ids)
    return tokens, np.zeros(tokens.shape, np.float32), lengths

  def record(self, tokens: np.ndarray, logprobs: np.ndarray, lengths: np.ndarray) -> int:
    """Steps the environment with the sampled rows of the active episodes.

    Args:
      tokens, logprobs: [R, M] sampled ids and their log-probs.
      lengths: [R] tokens generated per row (the end token included).

    Returns:
      How many episodes of this shard are still running.
    """
    responses, response_logprobs = [], []
    for observation in self._observations:
      row = observation.episode
      ids = tuple(int(t) for t in tokens[row, :lengths[row]])
      text_ids = ids[:-1] if ids and ids[-1] in self.eos_ids else ids
      responses.append(self.tokenizer.decode(list(text_ids), skip_special_tokens=False,
                                             clean_up_tokenization_spaces=False))
      response_logprobs.append(tuple(float(x) for x in logprobs[row, :len(ids)]))
      self._response_ids[row].append(ids)
    stepped = self._observations
    self._observations = self.env.step(
        responses, None if self.policy is not None else response_logprobs)
    if self.trace:
      results = self.env.results()
      for observation in stepped:
        self._seen[observation.episode].append(observation)
        self._memories[observation.episode].append(results[observation.episode].memories)
    return len(self._observations)

  def rewards(self) -> np.ndarray:
    """[R] float32 episode rewards (0 for rows without an episode)."""
    rewards = np.zeros((self.rows,), np.float32)
    for i, result in enumerate(self.env.results()):
      rewards[i] = result.reward
    return rewards

  def rollouts(self) -> list[EpisodeRollout]:
    return [EpisodeRollout(episode=self._first_episode + i, result=result,
                           response_token_ids=tuple(self._response_ids[i]),
                           observations=tuple(self._seen[i]),
                           memories=tuple(self._memories[i]))
            for i, result in enumerate(self.env.results())]


class HostRegistry:
  """This process's `ShardHost`s by shard index, and the entry points of the callbacks.

  Args:
    shards: the shards this process owns (maybe none).
    owner_replica: for each owned shard, the replica index of the device that acts for it.
    rows: batch rows per shard.
    prompt_width: padded prompt length (the largest bucket).
  """

  def __init__(self, shards: dict[int, ShardHost], owner_replica: dict[int, int], *,
               rows: int, prompt_width: int):
    self.shards = shards
    self.owner_replica = owner_replica
    self.rows = rows
    self.prompt_width = prompt_width
    self.error: BaseException | None = None
    self.callback_seconds = 0.0
    self._lock = threading.Lock()

  def _owns(self, shard, replica) -> bool:
    return self.owner_replica.get(int(shard)) == int(replica)

  def _call(self, shard, replica, work: Callable[[ShardHost], tuple], idle: tuple) -> tuple:
    """Runs `work` on the shard if the calling device owns it and no error happened yet."""
    if not self._owns(shard, replica):
      return idle
    with self._lock:
      start = time.perf_counter()
      try:
        return idle if self.error is not None else work(self.shards[int(shard)])
      except Exception as e:  # pylint: disable=broad-except
        self.error = e
        return idle
      finally:
        self.callback_seconds += time.perf_counter() - start

  def prompts(self, shard, replica):
    """(tokens [R, P], mask [R, P], active [R] 0/1, bucket index) of the shard."""
    idle = (np.zeros((self.rows, self.prompt_width), np.int32),
            np.zeros((self.rows, self.prompt_width), np.int32),
            np.zeros((self.rows,), np.int32), np.int32(0))
    def work(host: ShardHost):
      tokens, mask, active, bucket = host.prompts()
      return tokens, mask, active.astype(np.int32), bucket

    return self._call(shard, replica, work, idle)

  def scripted(self, shard, replica, max_new_tokens: int):
    """(tokens [R, M], log-probs [R, M], lengths [R]) of the shard's scripted policy."""
    idle = (np.zeros((self.rows, max_new_tokens), np.int32),
            np.zeros((self.rows, max_new_tokens), np.float32), np.zeros((self.rows,), np.int32))
    return self._call(shard, replica, lambda host: host.scripted(max_new_tokens), idle)

  def record(self, shard, replica, tokens, logprobs, lengths):
    """(episodes of the shard still running, 1 if a host error is pending else 0)."""
    (running,) = self._call(
        shard, replica,
        lambda host: (np.int32(host.record(np.asarray(tokens), np.asarray(logprobs),
                                           np.asarray(lengths))),),
        (np.int32(0),))
    return running, np.int32(self.error is not None and self._owns(shard, replica))

  def rewards(self, shard, replica):
    """([R] rewards of the shard's episodes,)."""
    return self._call(shard, replica, lambda host: (host.rewards(),),
                      (np.zeros((self.rows,), np.float32),))

  def raise_error(self) -> None:
    """Re-raises the first host error of the last run, if any."""
    if self.error is not None:
      error, self.error = self.error, None
      raise error
