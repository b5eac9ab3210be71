"""A finished or running training run, found from a path a user typed.

`python -m atommem_jax.export` and `python -m atommem_jax.evaluate --checkpoint` both take
either a run's workdir or one of its orbax directories (workdir/checkpoints/{grpo,sft,pretrain}), and
both need the model the run really trained: `train.setup.prepare` writes its Qwen3Config
(preset + model.overrides, vocab grown to the tokenizer) to model_config.json and its
tokenizer directory to run.json. A config file alone cannot rebuild those. The workdir may
be a URL (gs://...; `atommem_jax.fileio`).
"""

from __future__ import annotations

import dataclasses
import json

from atommem_jax import fileio
from atommem_jax.model.config import Qwen3Config
from atommem_jax.train import checkpoint as checkpoint_lib

MODEL_CONFIG_FILE = "model_config.json"
RUN_FILE = "run.json"
# Newest first: a run's final policy is its GRPO checkpoint, then SFT's, then its pretrained
# base (a pretraining-only run, configs/pretrain_tiny.py).
STAGES = ("grpo", "sft", "pretrain")


def find_checkpoints(path: str) -> tuple[str, str | None]:
  """(orbax directory, the run's workdir or None) for a workdir or checkpoint directory.

  A workdir gives its GRPO checkpoints if any step is complete, else its SFT ones, else its
  pretraining ones; a directory holding grpo/, sft/ or pretrain/ likewise; any other directory is taken as the orbax
  directory itself, inside workdir/checkpoints/.
  """
  path = fileio.abspath(path).rstrip("/")
  candidates = [(fileio.join(path, "checkpoints", s), path) for s in STAGES]
  candidates += [(fileio.join(path, s), fileio.dirname(path)) for s in STAGES]
  for directory, workdir in candidates:
    if fileio.isdir(directory):
      with checkpoint_lib.Checkpointer(directory) as manager:
        if manager.latest_step():
          return directory, workdir
  parent = fileio.dirname(fileio.dirname(path))
  return path, parent if fileio.isfile(fileio.join(parent, MODEL_CONFIG_FILE)) else None



def write(workdir: str, model_config: Qwen3Config, tokenizer_dir: str) -> None:
  """Records the model config and tokenizer directory of the run in `workdir`."""
  fileio.write_text(fileio.join(workdir, MODEL_CONFIG_FILE),
                    json.dumps(dataclasses.asdict(model_config), indent=2))
  fileio.write_text(fileio.join(workdir, RUN_FILE),
                    json.dumps({"tokenizer_dir": fileio.abspath(tokenizer_dir)}, indent=2))


def load_model_config(workdir: str) -> Qwen3Config:
  """The model config (training dtypes) a run saved in its workdir."""
  return Qwen3Config(**json.loads(fileio.read_text(fileio.join(workdir, MODEL_CONFIG_FILE))))


def trained_model(workdir: str | None) -> tuple[Qwen3Config, str] | None:
  """(model config, tokenizer directory) of the run in `workdir`; None if it has no record."""
  if not workdir or not fileio.isfile(fileio.join(workdir, MODEL_CONFIG_FILE)):
    return None
  tokenizer_dir = json.loads(fileio.read_text(fileio.join(workdir, RUN_FILE)))["tokenizer_dir"]
  return load_model_config(workdir), tokenizer_dir
