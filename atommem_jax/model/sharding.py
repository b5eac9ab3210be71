"""Device mesh, logical-axis rules and the shardings they imply.

Parameters and activations name their axes logically ("embed", "act_batch", ...); a rules
table maps each logical name to mesh axes. The default is FSDP over ("data", "fsdp") for the
batch and "fsdp" for the model dim of weights, plus tensor parallelism over heads, mlp and
vocab on "tensor". A dimension that the chosen mesh axes do not divide is replicated over
them instead (e.g. 2 kv heads on tensor=4), so every config runs on every mesh.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# (logical name, mesh axis | tuple of mesh axes | None); the first rule for a name wins.
Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

DEFAULT_RULES: Rules = (
    # Parameters.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    # Activations and data.
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


def make_mesh(axis_sizes: Mapping[str, int] | Sequence[int] | Sequence[tuple[str, int]],
              devices: Sequence[Any] | None = None) -> Mesh:
  """Builds a mesh over all global devices (every host's), e.g. {"data": -1, "tensor": 2}.

  `axis_sizes` is a mapping or a sequence of (name, size) pairs, or bare sizes for
  MESH_AXES in order. One size may be -1: it takes the devices left over.
  """
  pairs = _axis_pairs(axis_sizes)
  devices = list(jax.devices() if devices is None else devices)
  names = tuple(name for name, _ in pairs)
  sizes = [size for _, size in pairs]
  shown = dict(pairs)
  if len(set(names)) != len(names):
    raise ValueError(f"mesh axis sizes {shown}: axis names repeat")
  bad = [name for name, size in pairs if size != -1 and size < 1]
  if bad or sizes.count(-1) > 1:
    raise ValueError(f"mesh axis sizes {shown}: sizes must be >= 1, with at most one -1 "
                     "(which takes the remaining devices)")
  known = math.prod(size for size in sizes if size != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"mesh axis sizes {shown}: the fixed axes multiply to {known}, which "
                       f"does not divide the {len(devices)} devices; change the fixed sizes")
    sizes[sizes.index(-1)] = len(devices) // known
  elif known != len(devices):
    raise ValueError(f"mesh axis sizes {shown} multiply to {known} but there are "
                     f"{len(devices)} devices; make the product equal the device count or "
                     "set one axis to -1")
  return jax.make_mesh(tuple(sizes), names, axis_types=(jax.sharding.AxisType.Auto,) * len(names),
                       devices=devices)


def _axis_pairs(axis_sizes) -> list[tuple[str, int]]:
  if isinstance(axis_sizes, Mapping):
    return [(str(name), int(size)) for name, size in axis_sizes.items()]
  items = list(axis_sizes)
  if all(isinstance(size, int) for size in items):
    if len(items) != len(MESH_AXES):
      raise ValueError(f"mesh axis sizes {items}: bare sizes must give one size for each of "
                       f"{MESH_AXES}; pass a dict to name other axes")
    return list(zip(MESH_AXES, items))
  return [(str(name), int(size)) for name, size in items]


def logical_to_spec(logical_axes: Sequence[str | None], mesh: Mesh, rules: Rules,
                    shape: Sequence[int] | None = None) -> PartitionSpec:
  """PartitionSpec for one array whose axes have these logical names.

  Mesh axes missing from `mesh`, already used by an earlier dimension, or (when `shape` is
  given) not dividing the dimension are skipped, so such dimensions are replicated.
  """
  if shape is not None and len(shape) != len(logical_axes):
    raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
  used: set[str] = set()
  spec = []
  for i, name in enumerate(logical_axes):
    chosen = []
    for axis in _rule_targets(name, rules):
      if axis not in mesh.shape or axis in used:
        continue
      size = math.prod(mesh.shape[a] for a in chosen) * mesh.shape[axis]
      if shape is not None and shape[i] % size:
        continue
      chosen.append(axis)
    used.update(chosen)
    spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
  return PartitionSpec(*spec)


def _rule_targets(name: str | None, rules: Rules) -> tuple[str, ...]:
  if name is None:
    return ()
  for rule_name, target in rules:
    if rule_name == name:
      if target is None:
        return ()
      return (target,) if isinstance(target, str) else tuple(target)
  raise ValueError(f"logical axis {name!r} has no sharding rule; add ({name!r}, None) to the "
                   "rules to replicate it, or map it to mesh axes")


def is_logical_axes(node: Any) -> bool:
  """True for a leaf of a logical-axes tree: a tuple of axis names (or None)."""
  return isinstance(node, tuple) and all(a is None or isinstance(a, str) for a in node)


def logical_to_sharding(logical_axes_tree: Any, mesh: Mesh, rules: Rules,
                        shapes_tree: Any = None) -> Any:
  """NamedShardings for a tree of logical-axes tuples (shapes enable the replicate fallback).

  `shapes_tree` mirrors `logical_axes_tree` with arrays, ShapeDtypeStructs or shape tuples.
  """
  if shapes_tree is None:
    return jax.tree.map(lambda axes: NamedSharding(mesh, logical_to_spec(axes, mesh, rules)),
                        logical_axes_tree, is_leaf=is_logical_axes)
  return jax.tree.map(
      lambda axes, shaped: NamedSharding(
          mesh, logical_to_spec(axes, mesh, rules, getattr(shaped, "shape", shaped))),
      logical_axes_tree, shapes_tree, is_leaf=is_logical_axes)


@dataclasses.dataclass(frozen=True)
class ActivationSharding:
  """Constrains activations to their logical sharding; a no-op without a mesh."""

  mesh: Mesh | None = None
  rules: Rules = DEFAULT_RULES

  def __call__(self, x: jax.Array, logical_axes: tuple[str | None, ...]) -> jax.Array:
    if self.mesh is None:
      return x
    spec = logical_to_spec(logical_axes, self.mesh, self.rules, x.shape)
    return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))
