"""`TrainState` (step, params, optimizer state, RNG), the optimizer, and sharded creation.

The optimizer state mirrors the parameters' shardings (Adam moments are sharded like the
weights they belong to; scalars such as the step count are replicated), and the state is
created directly in that layout, never whole on one device.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from atommem_jax import config_lib
from atommem_jax.model import qwen3
from atommem_jax.model import sharding
from atommem_jax.model.config import Qwen3Config

Params = dict[str, Any]
# A stage's optimizer settings: the sft/grpo sections' schema, declared where the config
# builds it.
OptimizerConfig = config_lib.OptimizerConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
  """Everything a training run needs to resume: a pytree, so it can be jitted and donated."""

  step: jax.Array  # int32 scalar, number of optimizer updates applied
  params: Params
  opt_state: optax.OptState
  rng: jax.Array  # typed PRNG key, for the loop's sampling and shuffling


def learning_rate_schedule(config: OptimizerConfig) -> optax.Schedule:
  """Step -> learning rate: 0 -> peak linearly over warmup_steps, then constant, or a cosine
  or linear decay to min_lr_ratio x peak at total_steps (linear: TRL / DeepSpeed's
  WarmupDecayLR, the official SFT's)."""
  peak = config.lr
  if config.schedule == "cosine":
    after = optax.cosine_decay_schedule(peak, config.total_steps - config.warmup_steps,
                                        alpha=config.min_lr_ratio)
  elif config.schedule == "linear":
    after = optax.linear_schedule(peak, peak * config.min_lr_ratio,
                                  config.total_steps - config.warmup_steps)
  else:
    after = optax.constant_schedule(peak)
  if config.warmup_steps == 0:
    return after
  warmup = optax.linear_schedule(0.0, peak, config.warmup_steps)
  return optax.join_schedules([warmup, after], [config.warmup_steps])


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW on the schedule."""
  adamw = optax.adamw(learning_rate_schedule(config), b1=config.b1, b2=config.b2,
                      eps=config.eps, weight_decay=config.weight_decay)
  if not config.grad_clip:
    return adamw
  return optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw)


def single_device_mesh() -> Mesh:
  """A 1x1x1 mesh on the first device: the unsharded layout."""
  return sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])


def _abstract_params(config: Qwen3Config) -> Params:
  return jax.eval_shape(functools.partial(qwen3.init_params, config), jax.random.key(0))


def abstract_params(config: Qwen3Config, mesh: Mesh, rules: sharding.Rules | None = None
                    ) -> Params:
  """The params as jax.ShapeDtypeStruct (config.param_dtype) with their shardings on `mesh`."""
  shardings = qwen3.param_shardings(config, mesh, rules)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      _abstract_params(config), shardings)


def state_shardings(config: Qwen3Config, optimizer: optax.GradientTransformation,
                    mesh: Mesh, rules: sharding.Rules | None = None) -> TrainState:
  """NamedShardings of the state: params per `param_shardings`, optimizer leaves that belong
  to a parameter likewise, everything else (step, counts, rng) replicated."""
  replicated = NamedSharding(mesh, PartitionSpec())
  params = qwen3.param_shardings(config, mesh, rules)
  opt_shapes = jax.eval_shape(optimizer.init, _abstract_params(config))
  opt_state = optax.tree_map_params(optimizer, lambda _, param_sharding: param_sharding,
                                    opt_shapes, params,
                                    transform_non_params=lambda _: replicated)
  return TrainState(step=replicated, params=params, opt_state=opt_state, rng=replicated)


def abstract_train_state(config: Qwen3Config, optimizer: optax.GradientTransformation,
                         mesh: Mesh, rules: sharding.Rules | None = None) -> TrainState:
  """ShapeDtypeStructs with shardings for every state leaf (a checkpoint restore target)."""
  shapes = jax.eval_shape(lambda key: _new_state(config, optimizer, key, None),
                          jax.random.key(0))
  return jax.tree.map(lambda shape, leaf_sharding: jax.ShapeDtypeStruct(
      shape.shape, shape.dtype, sharding=leaf_sharding),
      shapes, state_shardings(config, optimizer, mesh, rules))


def _new_state(config: Qwen3Config, optimizer: optax.GradientTransformation, key: jax.Array,
               params: Params | None) -> TrainState:
  init_key, rng = jax.random.split(key)
  if params is None:
    params = qwen3.init_params(config, init_key)
  else:  # A copy: the caller's arrays (often also the GRPO reference) survive donation.
    params = jax.tree.map(jnp.copy, params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params), rng=rng)


def _is_key(x: Any) -> bool:
  return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def create_train_state(config: Qwen3Config, params_or_rng: Params | jax.Array,
                       optimizer: optax.GradientTransformation, mesh: Mesh | None = None,
                       rules: sharding.Rules | None = None, *,
                       rng: jax.Array | None = None, donate_params: bool = False) -> TrainState:
  """A fresh state laid out on `mesh` (default: one device).

  `params_or_rng`: a PRNG key (random init, created sharded) or a params tree (copied into
  the sharded layout, the caller's arrays stay valid unless `donate_params`: then the state
  takes over their memory, and they are deleted, so that a model is never held twice). The
  state's own RNG is split from the init key, or from `rng` (default key 0) when params are
  given.
  """
  mesh = mesh or single_device_mesh()
  shardings = state_shardings(config, optimizer, mesh, rules)
  if _is_key(params_or_rng):
    build = jax.jit(lambda key: _new_state(config, optimizer, key, None),
                    out_shardings=shardings)
    return build(params_or_rng)
  if isinstance(params_or_rng, jax.Array):
    raise TypeError("create_train_state: got a raw array, expected a params tree or a typed "
                    "PRNG key from jax.random.key(seed) (wrap raw key data with "
                    "jax.random.wrap_key_data)")
  params = jax.device_put(params_or_rng, shardings.params)
  key = jax.random.key(0) if rng is None else rng
  build = jax.jit(lambda params, key: _new_state(config, optimizer, key, params),
                  in_shardings=(shardings.params, shardings.rng), out_shardings=shardings,
                  donate_argnums=(0,) if donate_params else ())
  return build(params, key)


def split_rng(state: TrainState) -> tuple[TrainState, jax.Array]:
  """A fresh key for the caller and the state with its RNG advanced (deterministic resume)."""
  rng, key = jax.random.split(state.rng)
  return dataclasses.replace(state, rng=rng), key
