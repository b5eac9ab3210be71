"""Orbax checkpoints of a `TrainState` plus a JSON item (data position, stage name, ...).

Each step directory holds two items: `state` (params, optimizer state, step, and the RNG as
raw key data) and `meta` (JSON). Saves are asynchronous: `save` returns once the arrays are
copied off the devices (so the next step may donate the state) and the files are written in
the background; call `wait_until_finished` (or leave the `with` block) before exiting.

Orbax writes each step into a `<step>.orbax-checkpoint-tmp-*` directory and renames it when
complete, so a run killed mid-save leaves a temporary directory that is never listed. On top
of that, a step directory is only used when it holds orbax's `_CHECKPOINT_METADATA` file
(written before the rename): a half-copied directory is skipped too.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp
from etils import epath

from atommem_jax import fileio
from atommem_jax.train.state import TrainState

_STEP_METADATA = "_CHECKPOINT_METADATA"
ORBAX_PROTOCOLS = ("gs", "s3")  # etils.epath's and tensorstore's object stores


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints of a run under `directory`."""

  def __init__(self, directory: str | epath.PathLike, *, max_to_keep: int | None = 3,
               save_interval_steps: int = 1, async_save: bool = True):
    name = fileio.protocol(os.fspath(directory))
    if name is None:
      # Orbax refuses relative paths ("Checkpoint path should be absolute"), and a
      # workdir like `workdir/demo` is what users type.
      directory = fileio.abspath(os.fspath(directory))
    elif name not in ORBAX_PROTOCOLS:
      raise ValueError(f"checkpoint directory {directory}: orbax writes local paths and "
                       f"{', '.join(p + '://' for p in ORBAX_PROTOCOLS)} URLs only; put the "
                       "workdir on one of those")
    self._directory = epath.Path(directory)
    self._manager = ocp.CheckpointManager(
        self._directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
            enable_async_checkpointing=async_save),
        item_names=("state", "meta"))

  @property
  def directory(self) -> epath.Path:
    return self._directory

  def save(self, state: TrainState, meta: Mapping[str, Any] | None = None, *,
           step: int | None = None, force: bool = False) -> bool:
    """Starts saving `state` (and JSON-serialisable `meta`) as `step` (default state.step).

    Returns whether a save started (False between save intervals unless `force`).
    """
    step = int(jax.device_get(state.step)) if step is None else step
    tree = {"step": state.step, "params": state.params, "opt_state": state.opt_state,
            "rng": jax.random.key_data(state.rng)}
    json_item = {"meta": dict(meta or {}), "rng_impl": str(jax.random.key_impl(state.rng))}
    return self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                      meta=ocp.args.JsonSave(json_item)),
        force=force)

  def complete_steps(self) -> list[int]:
    """Steps whose checkpoint finished writing, ascending."""
    self._manager.reload()
    return sorted(step for step in self._manager.all_steps()
                  if (self._step_dir(step) / _STEP_METADATA).exists())

  def latest_step(self) -> int | None:
    """The newest complete step, or None when there is none."""
    steps = self.complete_steps()
    return steps[-1] if steps else None

  def restore(self, target: TrainState, *, step: int | None = None
              ) -> tuple[TrainState, dict[str, Any]]:
    """(state, meta) of `step` (default: the newest complete one), laid out like `target`.

    `target` is a TrainState of jax.ShapeDtypeStruct with shardings, e.g.
    `state.abstract_train_state(config, optimizer, mesh)`; every array is read straight
    into its sharding.
    """
    step = self._complete_step(step)
    rng_shape = jax.eval_shape(jax.random.key_data, target.rng)
    abstract_tree = {
        "step": target.step, "params": target.params, "opt_state": target.opt_state,
        "rng": jax.ShapeDtypeStruct(rng_shape.shape, rng_shape.dtype,
                                    sharding=target.rng.sharding),
    }
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_tree),
                                      meta=ocp.args.JsonRestore()))
    tree, json_item = restored.state, restored.meta
    state = dataclasses.replace(
        target, step=tree["step"], params=tree["params"], opt_state=tree["opt_state"],
        rng=jax.random.wrap_key_data(tree["rng"], impl=json_item["rng_impl"]))
    return state, dict(json_item["meta"])

  def restore_params(self, target: Any, *, step: int | None = None
                     ) -> tuple[Any, dict[str, Any]]:
    """(params, meta) of `step` (default: the newest complete one), nothing else read.

    `target` is the params tree of jax.ShapeDtypeStruct with shardings (e.g.
    `state.abstract_params(config, mesh)`); arrays are cast to its dtypes, so a rollout can
    read fp32 master weights as bf16. Needs no optimizer: works whatever the run's optimizer was.
    """
    step = self._complete_step(step)
    restore_args = jax.tree.map(
        lambda t: ocp.ArrayRestoreArgs(sharding=t.sharding, dtype=t.dtype), target)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item={"params": target},
                                     restore_args={"params": restore_args},
                                     partial_restore=True),
        meta=ocp.args.JsonRestore()))
    return restored.state["params"], dict(restored.meta["meta"])

  def _complete_step(self, step: int | None) -> int:
    """`step`, or the newest complete step when None; FileNotFoundError if not complete."""
    steps = self.complete_steps()
    if not steps:
      raise FileNotFoundError(f"no complete checkpoint under {self._directory}; start from "
                              "scratch or point the run at another checkpoint directory")
    step = steps[-1] if step is None else step
    if step not in steps:
      raise FileNotFoundError(f"no complete checkpoint for step {step} under "
                              f"{self._directory}; complete steps: {steps}")
    return step

  def wait_until_finished(self) -> None:
    """Blocks until every started save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def _step_dir(self, step: int) -> epath.Path:
    return self._directory / str(step)
