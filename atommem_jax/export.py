r"""Exports a training run's checkpoint as a Hugging Face Qwen3 directory.

  python -m atommem_jax.export --checkpoint DIR --out HF_DIR [--config FILE] [--step N]

--checkpoint is a run's workdir, its checkpoints/ directory, or one stage's directory
(checkpoints/pretrain, checkpoints/sft or checkpoints/grpo); a workdir or checkpoints/
directory exports the latest stage (GRPO when it has a complete step, else SFT, else the
pretrained base). The model config and tokenizer
come from the files the run wrote to its workdir (model_config.json, run.json); --config
is only needed for checkpoints written outside `python -m atommem_jax.train` (the model
then comes from the config's model section, the tokenizer from its tokenizer field); its
fields can be set with --config.FIELD=VALUE like the other CLIs'. --step N exports step N of
that directory; when it is absent or damaged (a truncated file, an empty _METADATA: see
`train.checkpoint`), one line names the step, the directory and what is wrong, and lists the
steps that restore. Without --step, the newest step that restores, as a resumed run takes.
`export` does the work from values (no flags).
"""

from __future__ import annotations

from typing import Sequence

from absl import app
from absl import flags
from ml_collections import config_flags

from atommem_jax import cli
from atommem_jax import fileio

FLAGS = flags.FLAGS
PROG = "atommem_jax.export"


def define_flags() -> None:
  """The CLI's flags: defined when it runs, not on import (tests import every CLI module
  into one process, and two modules defining --config would clash)."""
  flags.DEFINE_string("checkpoint", None, "run workdir or checkpoint directory")
  flags.DEFINE_string("out", None, "output Hugging Face directory")
  flags.DEFINE_integer("step", None, "checkpoint step (default: the newest one that restores)")
  config_flags.DEFINE_config_file("config", None, "experiment config (optional)")


def model_and_tokenizer(workdir: str | None, config, checkpoint: str):
  """(Qwen3Config, tokenizer dir) from the run's files in `workdir`, else from `config` (the
  model section; tokenizer field as `tokenizer_lib.resolve_tokenizer_dir` reads it)."""
  from atommem_jax import config_lib  # pylint: disable=g-import-not-at-top
  from atommem_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from atommem_jax.train import run_files  # pylint: disable=g-import-not-at-top
  trained = run_files.trained_model(workdir)
  if trained is not None:
    return trained
  if config is None:
    raise app.UsageError(f"--checkpoint {checkpoint}: no {run_files.MODEL_CONFIG_FILE} in the "
                         "run's workdir; pass --config with the run's config file")
  try:
    return (config_lib.model_config(config),
            tokenizer_lib.resolve_tokenizer_dir(config.tokenizer, workdir))
  except (config_lib.ConfigError, ValueError) as e:
    raise app.UsageError(str(e)) from e


def export(checkpoint: str, out: str, *, config=None, step: int | None = None) -> int:
  """Writes step `step` (default: the newest one that restores) of the run or checkpoint
  directory `checkpoint` to the Hugging Face directory `out`; returns the step.

  Raises app.UsageError when there is no complete step or no step `step`, and
  checkpoint.CheckpointError when the step is damaged; both list the steps that restore.
  """
  from atommem_jax.model import hf  # pylint: disable=g-import-not-at-top
  from atommem_jax.train import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from atommem_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  from atommem_jax.train import run_files  # pylint: disable=g-import-not-at-top
  directory, workdir = run_files.find_checkpoints(checkpoint)
  with checkpoint_lib.Checkpointer(directory) as manager:
    complete = manager.complete_steps()
    if not complete:
      raise app.UsageError(f"--checkpoint {checkpoint}: no complete checkpoint step under "
                           f"{directory}; give a training run's workdir or one of its "
                           "checkpoint directories")
    if step is not None and step not in complete:
      raise app.UsageError(f"--step {step}: no complete checkpoint step {step} under "
                           f"{directory}; steps that restore: {manager.intact_steps() or 'none'}")
    model_config, tokenizer_dir = model_and_tokenizer(workdir, config, checkpoint)
    target = state_lib.abstract_params(model_config, state_lib.single_device_mesh())
    if step is None:  # warns about each newer step it skips; None: none restores
      step = manager.latest_step()
    # step None here: CheckpointError naming each step and what is wrong with it.
    params, meta = manager.restore_params(target, step=step)
  hf.save_hf(model_config, params, out, tokenizer_dir=tokenizer_dir)
  print(f"exported step {step} ({meta.get('stage', '?')} stage) of {directory} to {out}")
  return step


def main(argv: Sequence[str]) -> None:
  del argv  # cli.run refuses positional arguments
  if not FLAGS.checkpoint or not FLAGS.out:
    raise app.UsageError("--checkpoint DIR and --out HF_DIR are required")
  if not fileio.isdir(FLAGS.checkpoint):
    raise app.UsageError(f"--checkpoint {FLAGS.checkpoint}: no such directory; give a training "
                         "run's workdir or one of its checkpoint directories")
  config = cli.load_config(PROG, required=False, cpu_devices=False)
  export(FLAGS.checkpoint, FLAGS.out, config=config, step=FLAGS.step)


if __name__ == "__main__":
  define_flags()
  cli.run(main, PROG)
