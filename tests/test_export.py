"""`atommem_jax.export`: flags parsed like the other CLIs, and `export` from values."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import app

from atommem_jax import config_lib
from atommem_jax import export
from atommem_jax.data import tokenizer as tokenizer_lib
from atommem_jax.model import hf
from atommem_jax.train import checkpoint as checkpoint_lib
from atommem_jax.train import state as state_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_config():
  config = config_lib.load_config_file("tiny")
  config.tokenizer = "qwen3"
  return config


def _checkpoint(directory, model_config, steps=(2,)):
  """TrainState checkpoints written outside the train CLI (no run files beside them): step s
  holds the params of seed s; returns those of the last."""
  optimizer = state_lib.make_optimizer(state_lib.OptimizerConfig())
  with checkpoint_lib.Checkpointer(str(directory), async_save=False) as manager:
    for step in steps:
      state = state_lib.create_train_state(model_config, jax.random.key(step), optimizer)
      manager.save(state, {"stage": "sft", "stage_step": step}, step=step)
  return state.params


def _truncate_a_data_file(step_dir) -> None:
  files = [os.path.join(root, name) for root, _, names in os.walk(step_dir / "state")
           for name in names if os.sep + "d" + os.sep in os.path.join(root, name)]
  path = max(files, key=os.path.getsize)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _empty_metadata(step_dir) -> None:
  (step_dir / "state" / "_METADATA").write_text("")


@pytest.mark.parametrize("damage, reason", [
    (_truncate_a_data_file, r"state/\S+ has \d+ bytes, \d+ were written"),
    (_empty_metadata, r"state/_METADATA is unreadable \(JSONDecodeError: .*\)")])
def test_a_damaged_or_absent_step_names_it_and_the_steps_that_restore(tmp_path, damage, reason):
  config = _tiny_config()
  model_config = config_lib.model_config(config)
  directory = tmp_path / "ckpt"
  _checkpoint(directory, model_config, steps=(1, 2))
  damage(directory / "2")
  out = str(tmp_path / "hf")
  with pytest.raises(checkpoint_lib.CheckpointError,
                     match=f"checkpoint step 2 under {directory} is damaged: {reason}; "
                           r"steps that restore: \[1\]"):
    export.export(str(directory), out, config=config, step=2)
  with pytest.raises(app.UsageError, match=f"--step 7: no complete checkpoint step 7 under "
                                           rf"{directory}; steps that restore: \[1\]"):
    export.export(str(directory), out, config=config, step=7)
  assert not os.path.exists(out)
  # Without --step: the newest step that restores, as a resumed run takes.
  assert export.export(str(directory), out, config=config) == 1
  _, loaded = hf.load_hf(out, "float32")
  optimizer = state_lib.make_optimizer(state_lib.OptimizerConfig())
  step_1 = state_lib.create_train_state(model_config, jax.random.key(1), optimizer).params
  for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(step_1)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_the_cli_on_a_damaged_step_prints_one_line(tmp_path):
  directory = tmp_path / "ckpt"
  _checkpoint(directory, config_lib.model_config(_tiny_config()), steps=(1, 2))
  _empty_metadata(directory / "2")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "-m", "atommem_jax.export", "--checkpoint", str(directory), "--out",
       str(tmp_path / "hf"), "--config", os.path.join(REPO, "configs", "tiny.py"),
       "--config.tokenizer=qwen3", "--step=2"], cwd=REPO, env=env, capture_output=True,
      text=True, timeout=120)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert result.stderr.strip().splitlines() == [
      f"atommem_jax.export: error: checkpoint step 2 under {directory} is damaged: "
      "state/_METADATA is unreadable (JSONDecodeError: Expecting value: line 1 column 1 (char "
      "0)); steps that restore: [1]"]


def test_a_misspelt_config_flag_is_one_line_like_the_other_clis(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "-m", "atommem_jax.export", "--checkpoint", str(tmp_path), "--out",
       str(tmp_path / "hf"), "--config", os.path.join(REPO, "configs", "tiny.py"),
       "--config.model.presett=tiny"], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=120)
  assert result.returncode != 0
  assert "--config.model.presett: the config has no field 'presett'" in result.stderr
  assert "Traceback" not in result.stderr


def test_export_of_a_checkpoint_without_run_files_takes_the_config(tmp_path):
  config = _tiny_config()
  model_config = config_lib.model_config(config)
  params = _checkpoint(tmp_path / "ckpt", model_config)
  out = str(tmp_path / "hf")
  assert export.export(str(tmp_path / "ckpt"), out, config=config) == 2
  loaded_config, loaded = hf.load_hf(out, "float32")
  assert loaded_config.hidden_size == model_config.hidden_size == 128  # configs/tiny.py's
  for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  exported = tmp_path / "hf" / "tokenizer_config.json"  # the config's tokenizer: qwen3
  shipped = pathlib.Path(tokenizer_lib.qwen3_tokenizer_dir()) / "tokenizer_config.json"
  assert json.loads(exported.read_text()) == json.loads(shipped.read_text())


def test_export_without_run_files_or_config_says_what_to_pass(tmp_path):
  _checkpoint(tmp_path / "ckpt", config_lib.model_config(_tiny_config()))
  with pytest.raises(app.UsageError, match="pass --config with the run's config file"):
    export.export(str(tmp_path / "ckpt"), str(tmp_path / "hf"))
  config = _tiny_config()
  config.tokenizer = "synthetic"  # trained with a run's model: there is none here
  with pytest.raises(app.UsageError, match="tokenizer='synthetic' is trained with the model"):
    export.export(str(tmp_path / "ckpt"), str(tmp_path / "hf"), config=config)
