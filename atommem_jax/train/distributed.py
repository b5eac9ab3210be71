"""Host values of a job on several processes (hosts): gathering them, and where rows live.

Every process runs the same program on the same config and workdir (a shared file system or
a gs:// / s3:// URL, as orbax checkpoints need). Most host values are the same everywhere (SFT
batches, rollout rewards); the rollout episodes are not: each process holds only the episodes
of the batch shards it owns (`rollout.episode.Rollout.episodes`). This module combines such
values and states where the GRPO batch rows of those episodes may live.

Layout assumption (`local_batch_shards` checks it): every batch shard, i.e. one coordinate
of the mesh's batch axes ("data" x "fsdp" under the default rules), lies on the devices of
one process. Then the process that rolled out a shard's episodes trains on them with its
own devices and no episode crosses hosts. It holds whenever the other axes ("tensor") stay
within a process, e.g. for every config of configs/ (tensor=1: all axes are batch axes).

Values cross processes as JSON (never pickle, which runs code while loading); episode
outcomes are rebuilt from it field by field, by their dataclasses' type hints. On one process
nothing is exchanged: no collective, no encoding.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Callable, Sequence, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from atommem_jax.agent import env as env_lib
from atommem_jax.model import sharding
from atommem_jax.rollout import host as host_lib

Result = TypeVar("Result")


def allgather_objects(value: Any) -> list[Any]:
  """`value` (a small JSON-serialisable host value) of every process, in process order.

  Tuples come back as lists; NaN and infinities survive (Python's JSON writes them).
  """
  if jax.process_count() == 1:
    return [value]
  data = np.frombuffer(json.dumps(value).encode(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.int32(data.size))).reshape(-1)
  width = 1 << int(sizes.max() - 1).bit_length()  # powers of two: few gather compilations
  padded = np.zeros(width, np.uint8)
  padded[:data.size] = data
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  return [json.loads(gathered[process, :size].tobytes().decode())
          for process, size in enumerate(sizes)]


def process_zero_first(fn: Callable[[], Result], name: str) -> Result:
  """fn() on process 0, then on the others once it returned.

  For set-up that writes shared files (the synthetic tokenizer in the workdir): the other
  processes find them instead of racing to write the same files.
  """
  if jax.process_count() == 1:
    return fn()
  result = fn() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices(name)
  return result if jax.process_index() == 0 else fn()


def _batch_axes(mesh: Mesh, rules: sharding.Rules) -> tuple[str, ...]:
  spec = sharding.logical_to_spec(("batch",), mesh, rules)[0]
  if spec is None:
    return ()
  return (spec,) if isinstance(spec, str) else tuple(spec)


def local_batch_shards(mesh: Mesh, rules: sharding.Rules = sharding.DEFAULT_RULES) -> int:
  """Batch shards on this process's devices, after checking the layout assumption.

  Raises ValueError when a batch shard spans processes or when processes hold different
  numbers of batch shards (then process-local rows cannot form one batch).
  """
  batch_axes = _batch_axes(mesh, rules)
  processes: dict[int, set[int]] = {}
  for position in np.ndindex(mesh.devices.shape):
    coordinate = dict(zip(mesh.axis_names, position))
    shard = 0
    for axis in batch_axes:
      shard = shard * mesh.shape[axis] + coordinate[axis]
    processes.setdefault(shard, set()).add(mesh.devices[position].process_index)
  for shard, owners in processes.items():
    if len(owners) > 1:
      raise ValueError(
          f"mesh {dict(mesh.shape)}: batch shard {shard} (a coordinate of the batch axes "
          f"{batch_axes}) spans processes {sorted(owners)}; each process trains on the "
          "episodes it rolled out, so the other mesh axes must stay within one process: make "
          f"mesh.tensor divide the {jax.local_device_count()} devices of a process")
  counts = [sum(owners == {p} for owners in processes.values())
            for p in range(jax.process_count())]
  if len(set(counts)) > 1:
    raise ValueError(f"mesh {dict(mesh.shape)}: processes hold {counts} batch shards; give "
                     "every process the same number of devices")
  return counts[jax.process_index()]


@dataclasses.dataclass(frozen=True)
class EpisodeOutcome:
  """What summaries need of one episode: its result without trajectory and memories."""
  episode: int
  result: env_lib.EpisodeResult
  response_lengths: tuple[int, ...]


def from_json(kind: Any, value: Any) -> Any:
  """`value` (as JSON gives it back: lists, dicts, numbers) as the type `kind`: dataclasses
  field by field from their type hints, tuples from lists; other values as they are."""
  if dataclasses.is_dataclass(kind):
    hints = typing.get_type_hints(kind)
    return kind(**{field.name: from_json(hints[field.name], value[field.name])
                   for field in dataclasses.fields(kind) if field.name in value})
  if typing.get_origin(kind) is tuple:
    items = typing.get_args(kind)
    if len(items) == 2 and items[1] is Ellipsis:
      items = (items[0],) * len(value)
    return tuple(from_json(item, element) for item, element in zip(items, value, strict=True))
  return value


def gather_outcomes(episodes: Sequence[host_lib.EpisodeRollout]) -> list[EpisodeOutcome]:
  """Every process's episodes, by episode index, as `EpisodeOutcome`s."""
  local = [EpisodeOutcome(e.episode,
                          dataclasses.replace(e.result, trajectory=(), memories=()),
                          tuple(len(ids) for ids in e.response_token_ids))
           for e in episodes]
  if jax.process_count() == 1:
    return sorted(local, key=lambda outcome: outcome.episode)
  parts = allgather_objects([dataclasses.asdict(outcome) for outcome in local])
  return sorted((from_json(EpisodeOutcome, outcome) for part in parts for outcome in part),
                key=lambda outcome: outcome.episode)
