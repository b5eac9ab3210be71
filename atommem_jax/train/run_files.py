"""A finished or running training run, found from a path a user typed.

`python -m atommem_jax.export` and `python -m atommem_jax.evaluate --checkpoint` both take
either a run's workdir or one of its orbax directories (workdir/checkpoints/{grpo,sft}), and
both need the model the run really trained: `train.setup.prepare` writes its Qwen3Config
(preset + model.overrides, vocab grown to the tokenizer) to model_config.json and its
tokenizer directory to run.json. A config file alone cannot rebuild those.
"""

from __future__ import annotations

import dataclasses
import json
import os

from atommem_jax.model.config import Qwen3Config
from atommem_jax.train import checkpoint as checkpoint_lib

MODEL_CONFIG_FILE = "model_config.json"
RUN_FILE = "run.json"
STAGES = ("grpo", "sft")  # newest first: a run's final policy is its GRPO checkpoint


def find_checkpoints(path: str) -> tuple[str, str | None]:
  """(orbax directory, the run's workdir or None) for a workdir or checkpoint directory.

  A workdir gives its GRPO checkpoints if any step is complete, else its SFT ones; a
  directory holding grpo/ and sft/ likewise; any other directory is taken as the orbax
  directory itself, inside workdir/checkpoints/.
  """
  candidates = [(os.path.join(path, "checkpoints", s), path) for s in STAGES]
  candidates += [(os.path.join(path, s), os.path.dirname(os.path.abspath(path)))
                 for s in STAGES]
  for directory, workdir in candidates:
    if os.path.isdir(directory):
      with checkpoint_lib.Checkpointer(directory) as manager:
        if manager.latest_step():
          return directory, workdir
  parent = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  return path, parent if os.path.isfile(os.path.join(parent, MODEL_CONFIG_FILE)) else None


def write(workdir: str, model_config: Qwen3Config, tokenizer_dir: str) -> None:
  """Records the model config and tokenizer directory of the run in `workdir`."""
  with open(os.path.join(workdir, MODEL_CONFIG_FILE), "w") as f:
    json.dump(dataclasses.asdict(model_config), f, indent=2)
  with open(os.path.join(workdir, RUN_FILE), "w") as f:
    json.dump({"tokenizer_dir": os.path.abspath(tokenizer_dir)}, f, indent=2)


def load_model_config(workdir: str) -> Qwen3Config:
  """The model config (training dtypes) a run saved in its workdir."""
  with open(os.path.join(workdir, MODEL_CONFIG_FILE)) as f:
    return Qwen3Config(**json.load(f))


def trained_model(workdir: str | None) -> tuple[Qwen3Config, str] | None:
  """(model config, tokenizer directory) of the run in `workdir`; None if it has no record."""
  if not workdir or not os.path.isfile(os.path.join(workdir, MODEL_CONFIG_FILE)):
    return None
  with open(os.path.join(workdir, RUN_FILE)) as f:
    tokenizer_dir = json.load(f)["tokenizer_dir"]
  return load_model_config(workdir), tokenizer_dir
