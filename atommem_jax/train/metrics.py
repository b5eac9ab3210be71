"""Metric logging at the edge of the training loop: TensorBoard scalars and a JSON-lines file,
plus a step timer for step time and tokens per second.

Only process 0 writes (every process may call), so multi-host runs log once. `log_dir` may be
a URL (gs://, s3://, any fsspec protocol): the files are then rewritten whole on object
storage (`fileio.RewrittenFile`), the JSON lines at most every `remote_flush_s` seconds and
at `flush` / `close`, the TensorBoard events at tensorboardX's own flushes (every 120 s).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Mapping

import jax
import numpy as np
import tensorboardX
from tensorboardX import record_writer

from atommem_jax import fileio


def _scalar(value: Any) -> float:
  return float(np.asarray(jax.device_get(value)).reshape(()))


def _json_number(value: float) -> float | str:
  """JSON has no NaN / inf: those are written as the strings "nan", "inf", "-inf"."""
  return value if math.isfinite(value) else str(value)


class _RemoteEventFiles:
  """tensorboardX's writer factory for URLs: event files through `fileio.RewrittenFile`."""

  def open(self, path: str) -> fileio.RewrittenFile:
    return fileio.RewrittenFile(path, append=False)

  def directory_check(self, path: str) -> None:
    fileio.makedirs(path)


def _route_tensorboard(log_dir: str) -> None:
  """Sends tensorboardX's files under `log_dir`'s protocol through fsspec (for gs:// and
  s3:// too, replacing tensorboardX's own clients, which need other packages)."""
  name = fileio.protocol(log_dir)
  if name is not None:
    record_writer.register_writer_factory(name, _RemoteEventFiles())


class MetricWriter:
  """Writes scalar metrics per step to `log_dir`/metrics.jsonl and TensorBoard event files."""

  def __init__(self, log_dir: str, *, tensorboard: bool = True,
               jsonl_name: str = "metrics.jsonl", remote_flush_s: float = 30.0):
    self._enabled = jax.process_index() == 0
    self._jsonl = None
    self._tensorboard = None
    if not self._enabled:
      return
    log_dir = fileio.canonical(log_dir)
    fileio.makedirs(log_dir)
    jsonl_path = fileio.join(log_dir, jsonl_name)
    if fileio.is_remote(log_dir):
      self._jsonl = fileio.RewrittenFile(jsonl_path, min_interval_s=remote_flush_s)
      self._flush_jsonl = lambda: self._jsonl.flush(force=False)
    else:
      self._jsonl = open(jsonl_path, "a", encoding="utf-8")
      self._flush_jsonl = self._jsonl.flush
    if tensorboard:
      _route_tensorboard(log_dir)
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
    self._flush_jsonl()
    if self._tensorboard is not None:
      for name, value in values.items():
        self._tensorboard.add_scalar(name, value, global_step=int(step))
    return values

  def flush(self) -> None:
    """Writes out everything logged so far (also to object storage)."""
    if self._jsonl is not None:
      self._jsonl.flush()
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
