r"""`python -m atommem_jax.train --config configs/NAME.py [--workdir DIR] [--config.x=y ...]`

Runs the training job (tokenizer, SFT, GRPO, evaluation, HF export) in --workdir (default
./workdir/NAME); restarting the same command resumes from the newest complete checkpoint.
Multi-host: --coordinator_address/--num_processes/--process_id, or --distributed to let
`jax.distributed.initialize()` read the cluster environment (SLURM, TPU pods, ...).
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config (configs/*.py)")
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory or gs:// / s3:// URL (default ./workdir/<config name>)")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "call jax.distributed.initialize() from the cluster environment")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index")


def _workdir() -> str:
  if _WORKDIR.value:
    return _WORKDIR.value
  name = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
  return os.path.join("workdir", name)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config configs/tiny.py")
  if not flags.FLAGS["verbosity"].present:  # Orbax logs every save at INFO.
    logging.set_verbosity(logging.WARNING)
  from atommem_jax import config_lib  # pylint: disable=g-import-not-at-top
  try:
    config_lib.validate(_CONFIG.value)
  except config_lib.ConfigError as e:  # one line, as a misspelt --config flag gives
    sys.exit(f"error: {flags.FLAGS['config'].config_filename}: {e}")
  config_lib.request_cpu_devices(_CONFIG.value)
  import jax  # pylint: disable=g-import-not-at-top
  if _COORDINATOR.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()
  from atommem_jax.data import multihop  # pylint: disable=g-import-not-at-top
  from atommem_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
  from atommem_jax.train import loop  # pylint: disable=g-import-not-at-top
  from atommem_jax.train import stages  # pylint: disable=g-import-not-at-top
  try:
    loop.run(_CONFIG.value, _workdir())
  except config_lib.ConfigError as e:
    sys.exit(f"error: {e}")
  except (stages.NonFiniteUpdateError, multihop.DataError, checkpoint.CheckpointError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  from atommem_jax import config_lib  # pylint: disable=g-import-not-at-top
  app.run(main, flags_parser=config_lib.parse_flags)
