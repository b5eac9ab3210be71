"""Jitted, sharded SFT and GRPO update steps, and the GRPO mini-batch/epoch loop.

Each step takes a `TrainBatch` [B, T] sharded over the mesh's batch axes ("data", "fsdp"):
jax.Arrays, or numpy arrays holding the whole batch (the same on every process), from which
each process fills its own devices' rows (`jax.make_array_from_callback`). The step splits
it into `grad_accum_steps` micro-batches of rows b, b + k, b + 2k, ... (so every device
keeps its rows), sums the micro-batch gradients of losses normalised by the whole
batch's token / sequence counts (so accumulation equals one big batch), clips and applies
AdamW once. The state is donated; params and optimizer state keep `state_shardings`.

Step metrics are scalars: sums over micro-batches, except `*_max` / `*_min` (max / min).
`grad_norm` is the global gradient norm before clipping.

`loss_chunk` > 0 computes the token log-probs `loss_chunk` positions at a time
(`model.logprobs`), so that no program holds a whole row's [T, V] logits.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from atommem_jax.model import logprobs as logprobs_lib
from atommem_jax.model import qwen3
from atommem_jax.model import sharding
from atommem_jax.model.config import Qwen3Config
from atommem_jax.train import batch as batch_lib
from atommem_jax.train import losses
from atommem_jax.train import state as state_lib
from atommem_jax.train.batch import TrainBatch
from atommem_jax.train.state import TrainState

Params = dict[str, Any]
Metrics = dict[str, jax.Array]
_BATCH_AXES = ("batch", "length")


def _combine(name: str, total: jax.Array, value: jax.Array) -> jax.Array:
  if name.endswith("_max"):
    return jnp.maximum(total, value)
  if name.endswith("_min"):
    return jnp.minimum(total, value)
  return total + value


def _identity(name: str, shape: jax.ShapeDtypeStruct) -> jax.Array:
  fill = -jnp.inf if name.endswith("_max") else jnp.inf if name.endswith("_min") else 0.0
  return jnp.full(shape.shape, fill, shape.dtype)


def _micro_batches(batch: TrainBatch, steps: int, mesh: Mesh, rules: sharding.Rules
                   ) -> TrainBatch:
  """[B, T] -> [k, B/k, T]; micro-batch i holds rows i, i + k, ... (no cross-device moves)."""
  rows, length = batch.shape
  spec = sharding.logical_to_spec((None,) + _BATCH_AXES, mesh, rules,
                                  (steps, rows // steps, length))

  def split(x):
    x = x.reshape(rows // steps, steps, length).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
  return jax.tree.map(split, batch)


def _accumulated_grads(loss_fn: Callable[..., tuple[jax.Array, Metrics]], params: Params,
                       batch: TrainBatch, grad_accum_steps: int, mesh: Mesh,
                       rules: sharding.Rules) -> tuple[Params, Metrics]:
  """Sum of d loss_fn(params, micro_batch) / d params over the micro-batches, and metrics."""
  grad_fn = jax.grad(loss_fn, has_aux=True)
  if grad_accum_steps == 1:
    return grad_fn(params, batch)
  micro = _micro_batches(batch, grad_accum_steps, mesh, rules)
  first = jax.tree.map(lambda x: x[0], micro)
  metric_shapes = jax.eval_shape(loss_fn, params, first)[1]
  zero_grads = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  zero_metrics = {name: _identity(name, shape) for name, shape in metric_shapes.items()}

  def body(carry, micro_batch):
    grads_sum, metrics_sum = carry
    grads, metrics = grad_fn(params, micro_batch)
    grads_sum = jax.tree.map(lambda total, g: total + g.astype(jnp.float32), grads_sum, grads)
    metrics_sum = {name: _combine(name, metrics_sum[name], value)
                   for name, value in metrics.items()}
    return (grads_sum, metrics_sum), None

  (grads, metrics), _ = jax.lax.scan(body, (zero_grads, zero_metrics), micro)
  grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
  return grads, metrics


def _apply(state: TrainState, grads: Params, loss: jax.Array,
           optimizer: optax.GradientTransformation, param_shardings: Params
           ) -> tuple[TrainState, Metrics]:
  """One optimizer update, or none when `loss` or a gradient is not finite (NaN or inf).

  The state is donated, so the old one is kept here, in the program: params, optimizer state
  and step are selected per element. Metrics: grad_norm, and update_skipped (1.0: no update).
  """
  grads = jax.lax.with_sharding_constraint(grads, param_shardings)
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jnp.where(finite, new, old)
  new_state = TrainState(step=keep(state.step + 1, state.step),
                         params=jax.tree.map(keep, params, state.params),
                         opt_state=jax.tree.map(keep, opt_state, state.opt_state),
                         rng=state.rng)
  return new_state, {"grad_norm": grad_norm,
                     "update_skipped": 1.0 - finite.astype(jnp.float32)}


def batch_shards(mesh: Mesh, rules: sharding.Rules = sharding.DEFAULT_RULES) -> int:
  """How many ways a batch's rows are split over the devices (the mesh axes of "batch")."""
  axes = sharding.logical_to_spec(("batch",), mesh, rules)[0] or ()
  return math.prod(mesh.shape[axis] for axis in ((axes,) if isinstance(axes, str) else axes))


def micro_batch_count(rows: int, grad_accum_steps: int, micro_batch_rows: int, mesh: Mesh,
                      rules: sharding.Rules) -> int:
  """Micro-batches of a batch of `rows` rows: `grad_accum_steps`, or with micro_batch_rows > 0
  as many as make micro-batches of that many rows per batch shard (verl's
  ppo_micro_batch_size_per_gpu: a GRPO batch's row count follows its episodes' turns)."""
  if micro_batch_rows <= 0:
    return grad_accum_steps
  per_micro = micro_batch_rows * batch_shards(mesh, rules)
  if rows % per_micro:
    raise ValueError(f"batch of {rows} rows cannot be split into micro-batches of "
                     f"micro_batch_rows={micro_batch_rows} rows x {per_micro // micro_batch_rows}"
                     " batch shards; pad the batch (batch.pad_examples(..., row_multiple=...))")
  return max(1, rows // per_micro)


def _check_targets_per_row(batch: TrainBatch, max_targets_per_row: int) -> None:
  """A host batch whose rows train more targets than the log-probs' bound is refused."""
  if max_targets_per_row <= 0 or isinstance(batch.loss_mask, jax.Array):
    return
  most = int(np.asarray(losses.target_mask(batch)).sum(axis=1).max(initial=0))
  if most > max_targets_per_row:
    raise ValueError(f"a batch row trains {most} target tokens, more than "
                     f"max_targets_per_row={max_targets_per_row} (a GRPO row holds one response "
                     "of at most rollout.max_new_tokens tokens)")


def _check_rows(batch: TrainBatch, grad_accum_steps: int) -> None:
  rows = batch.shape[0]
  if rows % grad_accum_steps:
    raise ValueError(f"batch of {rows} rows cannot be split into grad_accum_steps="
                     f"{grad_accum_steps} equal micro-batches; pad the batch "
                     "(batch.pad_examples(..., row_multiple=...)) or change grad_accum_steps")


def _batch_shardings(mesh: Mesh, rules: sharding.Rules, shape: tuple[int, int]) -> TrainBatch:
  tokens = sharding.logical_to_sharding(_BATCH_AXES, mesh, rules, shape)
  return TrainBatch(*(tokens,) * 6)


def _placed(batch: TrainBatch, shardings: TrainBatch) -> TrainBatch:
  """Host arrays (the whole batch, the same on every process) as global arrays per
  `shardings`; jax.Arrays pass unchanged (jit lays them out)."""
  def place(x, leaf_sharding):
    if isinstance(x, jax.Array):
      return x
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, leaf_sharding, lambda index: x[index])
  return jax.tree.map(place, batch, shardings)


def _token_logprobs(config: Qwen3Config, params: Params, batch: TrainBatch, mesh: Mesh,
                    rules: sharding.Rules, *, temperature: float = 1.0, loss_chunk: int = 0,
                    with_entropy: bool = False, all_tokens: bool = False,
                    max_targets_per_row: int = 0) -> tuple[jax.Array, jax.Array | None]:
  """The batch's token log-probs [B, T] (and entropies) under params, logits / temperature.

  Exact at the trained target tokens (`losses.target_mask`), or with `all_tokens` at every
  token of a sequence; lm-head chunks with none of those are skipped (0 there), and with
  max_targets_per_row > 0 only the targets go through the lm head (`model.logprobs`).
  """
  hidden, _ = qwen3.forward(config, params, batch.tokens, batch.positions,
                            segment_ids=batch.segment_ids, mesh=mesh, rules=rules,
                            hidden_only=True)
  needed = batch.segment_ids != 0 if all_tokens else losses.target_mask(batch) > 0
  return logprobs_lib.token_logprobs(config, params, hidden, batch.tokens,
                                     temperature=temperature, chunk=loss_chunk,
                                     with_entropy=with_entropy, needed=needed,
                                     max_needed=0 if all_tokens else max_targets_per_row,
                                     shard=sharding.ActivationSharding(mesh, rules))


def make_sft_step(config: Qwen3Config, optimizer: optax.GradientTransformation,
                  mesh: Mesh | None = None, rules: sharding.Rules | None = None, *,
                  grad_accum_steps: int = 1, prompt_loss_weight: float = 0.0,
                  loss_chunk: int = 0
                  ) -> Callable[[TrainState, TrainBatch], tuple[TrainState, Metrics]]:
  """Returns sft_step(state, batch) -> (state, metrics): one AdamW update on the SFT loss.

  Metrics: loss (the optimised value: mean NLL over the batch's response tokens, plus the
  weighted prompt NLL of `losses.sft_loss` when prompt_loss_weight > 0), num_tokens,
  grad_norm, and when prompt_loss_weight > 0: response_loss (the response tokens' mean NLL)
  and prompt_loss (the prompt tokens' mean NLL).
  """
  mesh = mesh or state_lib.single_device_mesh()
  rules = rules or sharding.DEFAULT_RULES
  shardings = state_lib.state_shardings(config, optimizer, mesh, rules)
  replicated = NamedSharding(mesh, PartitionSpec())

  def step(state: TrainState, batch: TrainBatch) -> tuple[TrainState, Metrics]:
    num_tokens, _ = losses.count_targets(batch)

    def loss_fn(params, micro):
      logprobs, _ = _token_logprobs(config, params, micro, mesh, rules, loss_chunk=loss_chunk,
                                    all_tokens=prompt_loss_weight > 0)
      return losses.sft_loss(logprobs, micro, num_tokens=num_tokens,
                             prompt_loss_weight=prompt_loss_weight)

    grads, metrics = _accumulated_grads(loss_fn, state.params, batch, grad_accum_steps, mesh,
                                        rules)
    state, update_metrics = _apply(state, grads, metrics["loss"], optimizer, shardings.params)
    if prompt_loss_weight:
      metrics["prompt_loss"] = (metrics.pop("prompt_nll_sum")
                                / jnp.maximum(metrics.pop("prompt_tokens"), 1.0))
    return state, {**metrics, **update_metrics}

  @functools.cache
  def compiled(shape: tuple[int, int]):
    return jax.jit(step, in_shardings=(shardings, _batch_shardings(mesh, rules, shape)),
                   out_shardings=(shardings, replicated), donate_argnums=(0,))

  def sft_step(state: TrainState, batch: TrainBatch) -> tuple[TrainState, Metrics]:
    _check_rows(batch, grad_accum_steps)
    batch = _placed(batch, _batch_shardings(mesh, rules, batch.shape))
    return compiled(batch.shape)(state, batch)

  return sft_step


def make_grpo_step(config: Qwen3Config, optimizer: optax.GradientTransformation,
                   grpo_config: losses.GRPOConfig = losses.GRPOConfig(),
                   mesh: Mesh | None = None, rules: sharding.Rules | None = None, *,
                   grad_accum_steps: int = 1, micro_batch_rows: int = 0, loss_chunk: int = 0,
                   max_targets_per_row: int = 0
                   ) -> Callable[[TrainState, Params | None, TrainBatch],
                                 tuple[TrainState, Metrics]]:
  """Returns grpo_step(state, ref_params, batch) -> (state, metrics): one AdamW update.

  ref_params (frozen reference policy, sharded like params) give the KL term's log-probs;
  they may be None when grpo_config.kl_estimator == "none". Logits of both policies are
  divided by grpo_config.temperature (the rollout temperature), as verl does. Metrics are
  those of `losses.grpo_loss`, plus grad_norm. A batch is split into `grad_accum_steps`
  micro-batches, or with micro_batch_rows > 0 into micro-batches of that many rows per batch
  shard, however many rows the batch has (`micro_batch_count`). max_targets_per_row > 0
  (rollout.max_new_tokens: a row is one turn) puts only each row's trained tokens through
  the lm head; a host batch with more is refused.
  """
  mesh = mesh or state_lib.single_device_mesh()
  rules = rules or sharding.DEFAULT_RULES
  shardings = state_lib.state_shardings(config, optimizer, mesh, rules)
  replicated = NamedSharding(mesh, PartitionSpec())
  use_ref = grpo_config.kl_estimator != "none"
  temperature = grpo_config.temperature

  def micro_batches(rows: int) -> int:
    return micro_batch_count(rows, grad_accum_steps, micro_batch_rows, mesh, rules)

  def step(state: TrainState, ref_params: Params | None, batch: TrainBatch
           ) -> tuple[TrainState, Metrics]:
    num_tokens, num_sequences = losses.count_targets(batch)

    def loss_fn(params, micro):
      ref_logprobs = None
      if use_ref:
        ref_logprobs, _ = _token_logprobs(config, ref_params, micro, mesh, rules,
                                          temperature=temperature, loss_chunk=loss_chunk,
                                          max_targets_per_row=max_targets_per_row)
        ref_logprobs = jax.lax.stop_gradient(ref_logprobs)
      logprobs, entropy = _token_logprobs(config, params, micro, mesh, rules,
                                          temperature=temperature, loss_chunk=loss_chunk,
                                          with_entropy=True,
                                          max_targets_per_row=max_targets_per_row)
      return losses.grpo_loss(logprobs, entropy, ref_logprobs, micro, num_tokens=num_tokens,
                              num_sequences=num_sequences, **grpo_config.loss_kwargs())

    grads, metrics = _accumulated_grads(loss_fn, state.params, batch,
                                        micro_batches(batch.shape[0]), mesh, rules)
    state, update_metrics = _apply(state, grads, metrics["loss"], optimizer, shardings.params)
    return state, {**metrics, **update_metrics}

  @functools.cache
  def compiled(shape: tuple[int, int]):
    return jax.jit(step, in_shardings=(shardings, shardings.params if use_ref else None,
                                       _batch_shardings(mesh, rules, shape)),
                   out_shardings=(shardings, replicated), donate_argnums=(0,))

  def grpo_step(state: TrainState, ref_params: Params | None, batch: TrainBatch
                ) -> tuple[TrainState, Metrics]:
    if use_ref and ref_params is None:
      raise ValueError(f"grpo_step: kl_estimator={grpo_config.kl_estimator!r} needs the "
                       "reference params; pass them or set kl_estimator='none'")
    _check_rows(batch, micro_batches(batch.shape[0]))
    _check_targets_per_row(batch, max_targets_per_row)
    batch = _placed(batch, _batch_shardings(mesh, rules, batch.shape))
    return compiled(batch.shape)(state, ref_params if use_ref else None, batch)

  return grpo_step


def _from_process_rows(batch: TrainBatch, mesh: Mesh | None, rules: sharding.Rules | None
                       ) -> TrainBatch:
  """Every process's rows [R, T] -> one global batch [P * R, T], each process's rows on its
  own devices (`jax.make_array_from_process_local_data`); one process's rows are the batch."""
  if jax.process_count() == 1:
    return batch
  if mesh is None:
    raise ValueError("grpo_update on several processes needs the grpo step's mesh (mesh=...) "
                     "to assemble the processes' rows into one batch")
  rows, length = batch.shape
  shape = (rows * jax.process_count(), length)
  shardings = _batch_shardings(mesh, rules or sharding.DEFAULT_RULES, shape)
  return jax.tree.map(lambda x, s: jax.make_array_from_process_local_data(s, x, shape),
                      batch, shardings)


def _process_rows(array: jax.Array) -> np.ndarray:
  """This process's rows of a global [P * R, T] array laid out by `_from_process_rows`."""
  if jax.process_count() == 1:
    return np.asarray(array)
  blocks = {shard.index[0].start or 0: shard.data for shard in array.addressable_shards}
  return np.concatenate([np.asarray(blocks[start]) for start in sorted(blocks)])


def grpo_update(grpo_step: Callable[[TrainState, Params | None, TrainBatch],
                                    tuple[TrainState, Metrics]],
                state: TrainState, ref_params: Params | None, batch: TrainBatch, *,
                num_minibatches: int = 1, epochs: int = 1, rng: jax.Array | None = None,
                mesh: Mesh | None = None, rules: sharding.Rules | None = None,
                old_logprobs_fn: Callable[[Params, TrainBatch], jax.Array] | None = None
                ) -> tuple[TrainState, dict[str, float]]:
  """Several updates on one rollout batch: `epochs` passes over `num_minibatches` row blocks.

  With `old_logprobs_fn` (`make_logprobs_fn` at the rollout temperature), the batch's
  old_logprobs are first recomputed with the current params, before any update, as verl
  does: the first mini-batch's ratios are then exactly 1, whatever the sampler's precision
  or kernels. Without it the batch's own (the sampler's) are used.

  With `rng`, rows are shuffled at every epoch (fold_in(rng, epoch)), so mini-batches mix
  groups; without it they are taken in order (verl's default, shuffle=False). Each
  mini-batch loss is normalised by its own counts, as in verl. Returns the final state and
  the metrics averaged over the updates (`*_max` / `*_min`: max / min), plus num_updates.

  `batch` (numpy) is this process's rows: the whole batch on one process. On several
  processes each passes the same number of rows (its rollouts', padded) and the grpo step's
  `mesh` / `rules`; rows never leave their process: the shuffle (the same permutation
  everywhere) and the mini-batch split act on each process's rows, and mini-batch m is the
  m-th block of every process's rows, laid out on the devices of the process that has them
  (this needs `distributed.local_batch_shards`' layout).
  """
  rows = batch.shape[0]
  if rows % num_minibatches:
    raise ValueError(f"batch of {rows} rows cannot be split into num_minibatches="
                     f"{num_minibatches} equal mini-batches; pad the batch or change it")
  if old_logprobs_fn is not None:
    old_logprobs = [_process_rows(old_logprobs_fn(state.params,
                                                  _from_process_rows(block, mesh, rules)))
                    for block in batch_lib.split_rows(batch, num_minibatches)]
    batch = dataclasses.replace(batch, old_logprobs=np.concatenate(old_logprobs))
  history = []
  for epoch in range(epochs):
    epoch_batch = batch
    if rng is not None:
      order = np.asarray(jax.random.permutation(jax.random.fold_in(rng, epoch), rows))
      epoch_batch = batch_lib.take_rows(batch, order)
    for minibatch in batch_lib.split_rows(epoch_batch, num_minibatches):
      state, metrics = grpo_step(state, ref_params, _from_process_rows(minibatch, mesh, rules))
      history.append(metrics)
  history = jax.device_get(history)
  summary = {}
  for name in history[0]:
    values = np.array([float(metrics[name]) for metrics in history])
    summary[name] = float(values.max() if name.endswith("_max") else
                          values.min() if name.endswith("_min") else values.mean())
  summary["num_updates"] = float(len(history))
  return state, summary


def make_logprobs_fn(config: Qwen3Config, mesh: Mesh | None = None,
                     rules: sharding.Rules | None = None, *, temperature: float = 1.0,
                     grad_accum_steps: int = 1, micro_batch_rows: int = 0, loss_chunk: int = 0,
                     max_targets_per_row: int = 0
                     ) -> Callable[[Params, TrainBatch], jax.Array]:
  """Returns fn(params, batch) -> [B, T] log-probs of the trained target tokens (0 elsewhere).

  Recomputes a batch's `old_logprobs` (verl recomputes them with the training forward) or
  the reference policy's log-probs; params sharded per `param_shardings`. The forward is the
  train steps': the same micro-batches (`grad_accum_steps` or `micro_batch_rows`, one at a
  time, so it fits where the step fits), lm-head chunks (`loss_chunk`) and targets per row.
  """
  mesh = mesh or state_lib.single_device_mesh()
  rules = rules or sharding.DEFAULT_RULES
  params_sharding = qwen3.param_shardings(config, mesh, rules)

  def micro_logprobs(params: Params, micro: TrainBatch) -> jax.Array:
    token_logprobs, _ = _token_logprobs(config, params, micro, mesh, rules,
                                        temperature=temperature, loss_chunk=loss_chunk,
                                        max_targets_per_row=max_targets_per_row)
    return token_logprobs * losses.target_mask(micro)

  def micro_batches(rows: int) -> int:
    return micro_batch_count(rows, grad_accum_steps, micro_batch_rows, mesh, rules)

  def logprobs(params: Params, batch: TrainBatch) -> jax.Array:
    count = micro_batches(batch.shape[0])
    if count == 1:
      return micro_logprobs(params, batch)
    micro = _micro_batches(batch, count, mesh, rules)
    per_micro = jax.lax.map(functools.partial(micro_logprobs, params), micro)  # [k, B/k, T]
    return per_micro.swapaxes(0, 1).reshape(batch.shape)

  @functools.cache
  def compiled(shape: tuple[int, int]):
    batch_sharding = _batch_shardings(mesh, rules, shape)
    return jax.jit(logprobs, in_shardings=(params_sharding, batch_sharding),
                   out_shardings=batch_sharding.tokens)

  def logprobs_fn(params: Params, batch: TrainBatch) -> jax.Array:
    _check_rows(batch, micro_batches(batch.shape[0]))
    _check_targets_per_row(batch, max_targets_per_row)
    return compiled(batch.shape)(params, _placed(batch, _batch_shardings(mesh, rules,
                                                                         batch.shape)))

  return logprobs_fn
