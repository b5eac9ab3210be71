"""Metric logging at the edge of the training loop: TensorBoard scalars and a JSON-lines file,
plus a step timer for step time and tokens per second.

Only process 0 writes (every process may call), so multi-host runs log once.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

import jax
import numpy as np
import tensorboardX


def _scalar(value: Any) -> float:
  return float(np.asarray(jax.device_get(value)).reshape(()))


def _json_number(value: float) -> float | str:
  """JSON has no NaN / inf: those are written as the strings "nan", "inf", "-inf"."""
  return value if math.isfinite(value) else str(value)


class MetricWriter:
  """Writes scalar metrics per step to `log_dir`/metrics.jsonl and TensorBoard event files."""

  def __init__(self, log_dir: str, *, tensorboard: bool = True,
               jsonl_name: str = "metrics.jsonl"):
    self._enabled = jax.process_index() == 0
    self._jsonl = None
    self._tensorboard = None
    if not self._enabled:
      return
    os.makedirs(log_dir, exist_ok=True)
    self._jsonl = open(os.path.join(log_dir, jsonl_name), "a", encoding="utf-8")
    if tensorboard:
      self._tensorboard = tensorboardX.SummaryWriter(log_dir)

  def write(self, step: int, metrics: Mapping[str, Any], *, prefix: str = ""
            ) -> dict[str, float]:
    """Logs scalar metrics (numbers or 0-d arrays) under `prefix`; returns them as floats."""
    values = {prefix + name: _scalar(value) for name, value in metrics.items()}
    if not self._enabled:
      return values
    record = {"step": int(step), "time": time.time()}
    record.update({name: _json_number(value) for name, value in values.items()})
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self._tensorboard is not None:
      for name, value in values.items():
        self._tensorboard.add_scalar(name, value, global_step=int(step))
    return values

  def flush(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tensorboard is not None:
      self._tensorboard.close()
      self._tensorboard = None

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


class StepTimer:
  """Measures one step: `start()`, run it, `stop(num_tokens, outputs)`.

  JAX dispatches asynchronously, so `stop` first blocks on `outputs` (e.g. the step's
  metrics) to time the computation rather than its dispatch.
  """

  def __init__(self):
    self._started: float | None = None

  def start(self) -> None:
    self._started = time.perf_counter()

  def stop(self, num_tokens: float, outputs: Any = None) -> dict[str, float]:
    """{"step_time_s", "tokens_per_s"} since `start()`."""
    if self._started is None:
      raise RuntimeError("StepTimer.stop() called before start()")
    if outputs is not None:
      jax.block_until_ready(outputs)
    elapsed = time.perf_counter() - self._started
    self._started = None
    return {"step_time_s": elapsed, "tokens_per_s": float(num_tokens) / max(elapsed, 1e-9)}
