r"""`python -m atommem_jax.train --config configs/NAME.py [--workdir DIR] [--config.x=y ...]`

Runs the training job (tokenizer, SFT, GRPO, evaluation, HF export) in --workdir (default
./workdir/NAME); restarting the same command resumes from the newest complete checkpoint.
Multi-host: --coordinator_address/--num_processes/--process_id, or --distributed to let
`jax.distributed.initialize()` read the cluster environment (SLURM, TPU pods, ...).
"""

from __future__ import annotations

import os
from typing import Sequence

from absl import flags
from ml_collections import config_flags

from atommem_jax import cli

PROG = "atommem_jax.train"
config_flags.DEFINE_config_file("config", None, "experiment config (configs/*.py)")
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory or gs:// / s3:// URL (default "
                               "./workdir/<config name>)")
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
  del argv  # cli.run refuses positional arguments
  config = cli.load_config(PROG)
  import jax  # pylint: disable=g-import-not-at-top  (a bad flag is reported before it loads)
  if _COORDINATOR.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()
  from atommem_jax.train import loop  # pylint: disable=g-import-not-at-top
  loop.run(config, _workdir())


if __name__ == "__main__":
  cli.run(main, PROG)
