"""The train CLI resumes past a damaged newest checkpoint, and stops with one line when no
checkpoint of a stage restores.

Reference: the resumed run logs the same later losses as the run whose checkpoint was damaged
(the loss of a step is a pure function of the restored state and the step's data).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = ("--config.sft.steps=4", "--config.grpo.steps=0", "--config.checkpoint.every_steps=2",
         "--config.data.synthetic.train_contexts=4", "--config.data.synthetic.eval_contexts=0",
         "--config.sft.batch_size=4", "--config.env.max_steps=8",
         "--config.rollout.prompt_buckets=(256,)", "--config.rollout.max_new_tokens=24",
         "--config.mesh.cpu_devices=0")


def _run(workdir) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0",
             TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  command = [sys.executable, "-m", "atommem_jax.train", "--config",
             os.path.join(REPO, "configs", "tiny.py"), "--workdir", str(workdir), *MICRO]
  return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300)


def _sft_losses(workdir) -> dict[int, float]:
  losses = {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    if "sft/loss" in record:
      losses[record["step"]] = record["sft/loss"]
  return losses


def _flip_a_byte(step_dir) -> None:
  files = [os.path.join(root, name) for root, _, names in os.walk(step_dir / "state")
           for name in names if os.sep + "d" + os.sep in os.path.join(root, name)]
  path = max(files, key=os.path.getsize)
  data = bytearray(pathlib.Path(path).read_bytes())
  data[len(data) // 2] ^= 0x40
  pathlib.Path(path).write_bytes(bytes(data))


@pytest.mark.slow
def test_train_resumes_before_a_damaged_checkpoint_and_stops_when_none_restores(tmp_path):
  workdir = tmp_path / "run"
  checkpoints = workdir / "checkpoints" / "sft"
  result = _run(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  first = _sft_losses(workdir)
  assert sorted(first) == [1, 2, 3, 4]

  _flip_a_byte(checkpoints / "4")
  result = _run(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"checkpoint step 4 under {checkpoints} is skipped" in result.stderr
  assert "does not match its checksum" in result.stderr
  assert "sft: resuming after step 2" in result.stdout
  assert _sft_losses(workdir) == first  # steps 3 and 4 trained again, to the same losses
  assert sorted(os.listdir(checkpoints)) == ["2", "4", "4.damaged"]

  for step in ("2", "4"):
    _flip_a_byte(checkpoints / step)
  result = _run(workdir)
  assert result.returncode == 1
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"atommem_jax.train: error: no checkpoint under {checkpoints} can be "
                         "restored (step 4: ")
  assert "step 2: " in last
