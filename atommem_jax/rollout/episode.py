"""The jitted episode loop: a batch of AtomMem episodes as one XLA program.

One compiled program runs every agent step of a batch of episodes:

  while any episode runs and step < env step limit:        (outer lax.while_loop)
    prompts, mask, active, bucket = io_callback(host prompts)  [per batch shard]
    samples = lax.switch(bucket, [sample with prompt length b for b in buckets])
    running, errors = io_callback(host record samples)         [per batch shard]
  rewards = io_callback(host rewards)                          [per batch shard]

Sharding. The episodes are laid out over the mesh's batch axes (the "act_batch" rule,
("data", "fsdp") by default): shard s holds rows [s * R, (s + 1) * R) and has its own
`ShardHost` (environment, stores, trajectories) on the process that owns it. The callbacks
sit in small fully-manual `jax.shard_map` regions (io_callback inside SPMD code needs every
mesh axis manual), so every device calls back with its (shard, replica) coordinates from
`lax.axis_index`; only the shard's owner device acts, the other replicas (the "tensor" axis,
or any axis outside the batch rule) return zeros, and a `psum` over those axes hands the
owner's result to all of them. No episode data ever goes to another host: each process
creates hosts only for the shards its devices own. The model part runs outside the
shard_map regions under the ordinary automatic (GSPMD) partitioning, so params may be
sharded over fsdp/tensor exactly as in training (`qwen3.param_shardings`).

Buckets. The prompt callback's result shape is static: prompts come left-padded to the
largest bucket with the index of the smallest bucket that holds every active prompt
(`pmax` over shards). `lax.switch` runs the sampler on the last `b` columns, each branch
with its own static prompt length and KV-cache size, so one compilation serves every
step of every run with the same batch size: a step pays for its bucket, not the largest.

Rows of finished (or absent) episodes are inactive: the sampler starts them done, so they
neither generate nor keep the decode loop running, and the host ignores them.

Generation hook: the model sampler by default, or a scripted policy (`agent.oracle.Policy`,
one per shard) whose response texts the host tokenizes and feeds back as if sampled
(teacher forcing), which makes the loop testable against `agent.oracle.run_episodes`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from atommem_jax.agent import env as env_lib
from atommem_jax.agent import oracle
from atommem_jax.data.multihop import LongContext
from atommem_jax.memory import embed as embed_lib
from atommem_jax.model import qwen3
from atommem_jax.model import sharding
from atommem_jax.model.config import Qwen3Config
from atommem_jax.rollout import host as host_lib
from atommem_jax.rollout import sampler

EpisodeRollout = host_lib.EpisodeRollout


@dataclasses.dataclass(frozen=True)
class Rollout:
  """What one run of the loop produced.

  Attributes:
    episodes: this process's episodes (all of them on one host), by global index.
    rewards: [B, G] rewards of every episode on every process (episode b * G + g is
      sample g of context b; G = 1 outside GRPO).
    steps: agent steps the loop ran (the longest episode's length).
    seconds: wall time of the run.
    callback_seconds: time spent inside this process's host callbacks.
  """
  episodes: tuple[EpisodeRollout, ...]
  rewards: np.ndarray
  steps: int
  seconds: float
  callback_seconds: float

  def groups(self) -> list[list[EpisodeRollout]]:
    """Episodes grouped [B][G] like `rewards` (needs every episode on this process)."""
    num_contexts, group_size = self.rewards.shape
    if len(self.episodes) != num_contexts * group_size:
      raise ValueError(f"this process holds {len(self.episodes)} of the "
                       f"{num_contexts * group_size} episodes; group them by "
                       "`EpisodeRollout.episode // group_size` instead")
    return [list(self.episodes[b * group_size:(b + 1) * group_size])
            for b in range(num_contexts)]


def select_groups(rollouts: Sequence[Rollout], picks: Sequence[tuple[int, int]]) -> Rollout:
  """Groups of several rollouts (of one group size) as one: `picks` lists (rollout, group)
  pairs in the order wanted; the g-th episode of the k-th pick becomes episode k * G + g.
  Each process keeps its own episodes of the picked groups, as `EpisodeLoop.run` does."""
  if not rollouts or not picks:
    raise ValueError("select_groups needs at least one rollout and one group to pick")
  size = rollouts[0].rewards.shape[1]
  if any(rollout.rewards.shape[1] != size for rollout in rollouts):
    raise ValueError("select_groups: the rollouts have different group sizes "
                     f"{[rollout.rewards.shape[1] for rollout in rollouts]}")
  episodes = []
  for k, (r, group) in enumerate(picks):
    episodes += [dataclasses.replace(e, episode=k * size + e.episode % size)
                 for e in rollouts[r].episodes if e.episode // size == group]
  return Rollout(episodes=tuple(sorted(episodes, key=lambda e: e.episode)),
                 rewards=np.stack([rollouts[r].rewards[group] for r, group in picks]),
                 steps=max(rollout.steps for rollout in rollouts),
                 seconds=sum(rollout.seconds for rollout in rollouts),
                 callback_seconds=sum(rollout.callback_seconds for rollout in rollouts))


class EpisodeLoop:
  """Compiles the episode loop for one batch size and mesh, and runs batches through it.

  Args:
    model_config: the policy's config (rollout dtypes); None with `make_policy`.
    tokenizer: the policy's tokenizer.
    env_config: episode settings; its prompt budget (`max_prompt_tokens`) is lowered to
      the largest prompt bucket, so a long prompt is cut (and counted) instead of failing.
    embedder: the stores' embedder (shared by the shards of this process).
    batch_size: episodes per run at most (rounded up to a multiple of the batch shards;
      smaller runs leave rows inactive).
    prompt_buckets: allowed prompt lengths (ascending).
    sampling: sampler settings (greedy for evaluation); `max_new_tokens` also caps the
      scripted responses.
    mesh, rules: the device mesh (default: the first device) and logical axis rules.
    make_policy: builds a scripted policy per shard; None samples from the model.
    trace: keep every step's observation and store in the rollouts (evaluation logs).
  """

  def __init__(self, model_config: Qwen3Config | None, tokenizer,
               env_config: env_lib.EnvConfig, embedder: embed_lib.Embedder, *,
               batch_size: int, prompt_buckets: Sequence[int], sampling: sampler.SamplingConfig,
               mesh: Mesh | None = None, rules: sharding.Rules | None = None,
               make_policy: Callable[[], oracle.Policy] | None = None, trace: bool = False):
    if model_config is None and make_policy is None:
      raise ValueError("EpisodeLoop needs a model_config (model sampling) or make_policy "
                       "(a scripted policy)")
    buckets = tuple(prompt_buckets)
    if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 1:
      raise ValueError(f"prompt_buckets={buckets}: give increasing positive lengths")
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size} must be >= 1")
    env_config = dataclasses.replace(
        env_config, max_prompt_tokens=min(env_config.max_prompt_tokens, buckets[-1]))
    self.model_config = model_config
    self.sampling = sampling
    self.buckets = buckets
    self.mesh = mesh or sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    self.rules = rules or sharding.DEFAULT_RULES
    self.scripted = make_policy is not None
    self.step_limit = env_config.step_limit
    self.batch_axes = _batch_axes(self.mesh, self.rules)
    self.other_axes = tuple(a for a in self.mesh.axis_names if a not in self.batch_axes)
    self.num_shards = math.prod(self.mesh.shape[a] for a in self.batch_axes)
    self.rows = -(-batch_size // self.num_shards)
    self.batch_size = self.rows * self.num_shards
    owners = _shard_owners(self.mesh, self.batch_axes, self.other_axes)
    eos_ids = host_lib.eos_token_ids(tokenizer)
    pad_id = sampling.pad_id
    local = {shard: replica for shard, (process, replica) in owners.items()
             if process == jax.process_index()}
    self.registry = host_lib.HostRegistry(
        {shard: host_lib.ShardHost(
            env_lib.MemoryEnv(env_config, tokenizer, embedder), tokenizer, rows=self.rows,
            prompt_buckets=buckets, pad_id=pad_id, eos_ids=eos_ids,
            policy=make_policy() if make_policy else None, trace=trace)
         for shard in local},
        local, rows=self.rows, prompt_width=buckets[-1])
    self.num_traces = 0
    self._params_sharding = (None if self.scripted else
                             qwen3.param_shardings(model_config, self.mesh, self.rules))
    self._replicated = NamedSharding(self.mesh, PartitionSpec())
    self._run = jax.jit(self._loop, static_argnames="rng_impl")

  def run(self, params, contexts: Sequence[LongContext], rng: jax.Array, *,
          group_size: int = 1) -> Rollout:
    """Runs `group_size` episodes per context (each with its own store) until all end.

    Every process passes the same contexts and rng; each steps only its own shards.
    """
    episodes = [context for context in contexts for _ in range(group_size)]
    if not episodes or len(episodes) > self.batch_size:
      raise ValueError(f"{len(contexts)} contexts x group_size {group_size} = "
                       f"{len(episodes)} episodes; this loop runs 1 to {self.batch_size} "
                       "episodes at a time (its batch_size)")
    for shard, shard_host in self.registry.shards.items():
      start = shard * self.rows
      shard_host.reset(episodes[start:start + self.rows], first_episode=start)
    self.registry.callback_seconds = 0.0
    if not self.scripted:
      params = jax.device_put(params, self._params_sharding)
    start = time.perf_counter()
    host_key = np.asarray(jax.random.key_data(rng))
    key_data = jax.make_array_from_callback(host_key.shape, self._replicated,
                                            lambda index: host_key[index])
    rewards, steps = self._run(params, key_data, rng_impl=str(jax.random.key_impl(rng)))
    rewards = _to_host(rewards)
    seconds = time.perf_counter() - start
    self.registry.raise_error()
    rollouts = sorted((r for shard in self.registry.shards.values() for r in shard.rollouts()),
                      key=lambda r: r.episode)
    return Rollout(episodes=tuple(rollouts),
                   rewards=rewards[:len(episodes)].reshape(len(contexts), group_size),
                   steps=int(np.asarray(steps.addressable_data(0))), seconds=seconds,
                   callback_seconds=self.registry.callback_seconds)

  def lower(self, params, key_data: jax.ShapeDtypeStruct,
            rng_impl: str = "threefry2x32") -> jax.stages.Lowered:
    """The loop's program lowered for params and raw key data (arrays or ShapeDtypeStructs
    with shardings), to compile ahead of time (`atommem_jax.aot`)."""
    return self._run.lower(params, key_data, rng_impl=rng_impl)

  def _loop(self, params, key_data: jax.Array, rng_impl: str
            ) -> tuple[jax.Array, jax.Array]:
    """The whole batch: rewards [N] over the batch axes and the number of steps.

    The key comes as raw data (replicated on every process) and is wrapped here.
    """
    self.num_traces += 1
    rng = jax.random.wrap_key_data(key_data, impl=rng_impl)
    rows, width = self.rows, self.buckets[-1]

    def cond(state):
      step, _, running, errors = state
      return (step < self.step_limit) & (running > 0) & (errors == 0)

    def body(state):
      step, rng, _, _ = state
      rng, key = jax.random.split(rng)
      tokens, mask, active, bucket = self._callback(
          self.registry.prompts, (_shape((rows, width)), _shape((rows, width)),
                                  _shape((rows,)), _shape(())), scalar_op=jax.lax.pmax)
      samples = self._generate(params, tokens, mask, active.astype(bool), bucket, key)
      running, errors = self._callback(
          self.registry.record, (_shape(()), _shape(())),
          samples.tokens, samples.logprobs, samples.lengths)
      return step + 1, rng, running, errors

    state = (jnp.int32(0), rng, jnp.int32(1), jnp.int32(0))
    steps, _, _, _ = jax.lax.while_loop(cond, body, state)
    (rewards,) = self._callback(self.registry.rewards, (_shape((rows,), jnp.float32),))
    return rewards, steps

  def _generate(self, params, tokens: jax.Array, mask: jax.Array, active: jax.Array,
                bucket: jax.Array, rng: jax.Array) -> sampler.Samples:
    """Responses [N, M] of the active rows: the model's, or the scripted policy's."""
    if self.scripted:
      rows, max_new = self.rows, self.sampling.max_new_tokens
      tokens, logprobs, lengths = self._callback(
          functools.partial(self.registry.scripted, max_new_tokens=max_new),
          (_shape((rows, max_new)), _shape((rows, max_new), jnp.float32), _shape((rows,))))
      return sampler.Samples(tokens=tokens, logprobs=logprobs, lengths=lengths)

    def branch(length: int):
      return lambda: sampler.sample(self.model_config, params, tokens[:, -length:],
                                    mask[:, -length:], rng, self.sampling, active=active,
                                    mesh=self.mesh, rules=self.rules)

    return jax.lax.switch(bucket, [branch(length) for length in self.buckets])

  def _callback(self, fn, result_shapes: tuple[jax.ShapeDtypeStruct, ...], *args,
                scalar_op=jax.lax.psum) -> tuple[jax.Array, ...]:
    """Calls fn(shard, replica, *this shard's args) on every device; combines the results.

    Per-row results (leading axis R) are summed over the replica axes (only the owner's
    are non-zero) and laid out over the batch axes; scalars are combined over every
    device with `scalar_op` (psum: a total over shards; pmax: the largest).
    """
    # Every result crosses as one rank: JAX 0.10's TPU lowering under Shardy rejects a host
    # callback whose results differ in rank ('stablehlo.recv' sharding rank mismatch).
    rank = max(len(s.shape) for s in result_shapes)
    sent = tuple(jax.ShapeDtypeStruct(s.shape + (1,) * (rank - len(s.shape)), s.dtype)
                 for s in result_shapes)

    def host(*host_args):
      return tuple(np.reshape(r, s.shape) for r, s in zip(fn(*host_args), sent))

    def per_device(*shard_args):
      shard = _linear_index(self.mesh, self.batch_axes)
      replica = _linear_index(self.mesh, self.other_axes)
      results = io_callback(host, sent, shard, replica, *shard_args, ordered=True)
      results = [r.reshape(s.shape) for r, s in zip(results, result_shapes)]
      return tuple(scalar_op(r, self.mesh.axis_names) if r.ndim == 0
                   else jax.lax.psum(r, self.other_axes) if self.other_axes else r
                   for r in results)

    rows = PartitionSpec(self.batch_axes)
    out_specs = tuple(PartitionSpec() if not s.shape else rows for s in result_shapes)
    return jax.shard_map(per_device, mesh=self.mesh, in_specs=tuple(rows for _ in args),
                         out_specs=out_specs)(*args)


def _shape(shape: tuple[int, ...], dtype=jnp.int32) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(shape, dtype)


def _batch_axes(mesh: Mesh, rules: sharding.Rules) -> tuple[str, ...]:
  """Mesh axes of the "act_batch" rule present in `mesh`."""
  spec = sharding.logical_to_spec(("act_batch",), mesh, rules)[0]
  if spec is None:
    return ()
  return (spec,) if isinstance(spec, str) else tuple(spec)


def _linear_index(mesh: Mesh, axes: Sequence[str]) -> jax.Array:
  """Row-major index of this device over `axes` (0 when there are none); in shard_map."""
  index = jnp.int32(0)
  for axis in axes:
    index = index * mesh.shape[axis] + jax.lax.axis_index(axis)
  return index


def _shard_owners(mesh: Mesh, batch_axes: Sequence[str], other_axes: Sequence[str]
                  ) -> dict[int, tuple[int, int]]:
  """shard -> (process, replica) of the device that acts for it: the first device of the
  shard by (process index, device id), so the choice is the same on every process."""
  candidates: dict[int, list[tuple[int, int, int]]] = {}
  for position in np.ndindex(mesh.devices.shape):
    coordinate = dict(zip(mesh.axis_names, position))
    shard = replica = 0
    for axis in batch_axes:
      shard = shard * mesh.shape[axis] + coordinate[axis]
    for axis in other_axes:
      replica = replica * mesh.shape[axis] + coordinate[axis]
    device = mesh.devices[position]
    candidates.setdefault(shard, []).append((device.process_index, device.id, replica))
  return {shard: (min(devices)[0], min(devices)[2]) for shard, devices in candidates.items()}


def _to_host(x: jax.Array) -> np.ndarray:
  """A batch-sharded array's global value on every process."""
  if x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
