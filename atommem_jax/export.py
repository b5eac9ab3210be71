r"""Exports a training run's checkpoint as a Hugging Face Qwen3 directory.

  python -m atommem_jax.export --checkpoint DIR --out HF_DIR [--config FILE] [--step N]

--checkpoint is a run's workdir, its checkpoints/ directory, or one stage's directory
(checkpoints/sft or checkpoints/grpo); a workdir or checkpoints/ directory exports the
latest stage (GRPO when it has a complete step, else SFT). The model config and tokenizer
come from the files the run wrote to its workdir (model_config.json, run.json); --config
is only needed for checkpoints written outside `python -m atommem_jax.train` (the model
then comes from the config's model section, the tokenizer from its tokenizer field).
"""

from __future__ import annotations

from typing import Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from atommem_jax import fileio

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "run workdir or checkpoint directory")
_OUT = flags.DEFINE_string("out", None, "output Hugging Face directory")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the newest complete one)")
_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config (optional)")


def _model_and_tokenizer(workdir: str | None):
  """(Qwen3Config, tokenizer dir) from the run's files, else from --config."""
  from atommem_jax import config_lib  # pylint: disable=g-import-not-at-top
  from atommem_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from atommem_jax.train import run_files  # pylint: disable=g-import-not-at-top
  trained = run_files.trained_model(workdir)
  if trained is not None:
    return trained
  if _CONFIG.value is None:
    raise app.UsageError(f"--checkpoint {_CHECKPOINT.value}: no {run_files.MODEL_CONFIG_FILE} in "
                         "the run's workdir; pass --config with the run's config file")
  config = _CONFIG.value
  try:
    model_config = config_lib.model_config(config)
  except config_lib.ConfigError as e:
    raise app.UsageError(str(e)) from e
  tokenizer = config.tokenizer
  tokenizer_dir = tokenizer_lib.qwen3_tokenizer_dir() if tokenizer == "qwen3" else tokenizer
  if not fileio.isdir(tokenizer_dir):
    raise app.UsageError(f"config field tokenizer={tokenizer!r}: give 'qwen3' or a tokenizer "
                         "directory to copy into the export")
  return model_config, tokenizer_dir


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _CHECKPOINT.value or not _OUT.value:
    raise app.UsageError("--checkpoint DIR and --out HF_DIR are required")
  if not fileio.isdir(_CHECKPOINT.value):
    raise app.UsageError(f"--checkpoint {_CHECKPOINT.value}: no such directory; give a training "
                         "run's workdir or one of its checkpoint directories")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  from atommem_jax.model import hf  # pylint: disable=g-import-not-at-top
  from atommem_jax.train import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from atommem_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  from atommem_jax.train import run_files  # pylint: disable=g-import-not-at-top
  directory, workdir = run_files.find_checkpoints(_CHECKPOINT.value)
  manager = checkpoint_lib.Checkpointer(directory)
  if manager.latest_step() is None:
    raise app.UsageError(f"--checkpoint {_CHECKPOINT.value}: no complete checkpoint step under "
                         f"{directory}")
  model_config, tokenizer_dir = _model_and_tokenizer(workdir)
  target = state_lib.abstract_params(model_config, state_lib.single_device_mesh())
  try:
    step = _STEP.value if _STEP.value is not None else manager.latest_step()
    params, meta = manager.restore_params(target, step=step)
  except FileNotFoundError as e:
    raise app.UsageError(str(e)) from e
  finally:
    manager.close()
  hf.save_hf(model_config, params, _OUT.value, tokenizer_dir=tokenizer_dir)
  print(f"exported step {step} ({meta.get('stage', '?')} stage) of {directory} to {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
