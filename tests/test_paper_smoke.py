"""`make paper-smoke` at a smaller size: the paper config's whole real path through the CLIs.

References: transformers loads the exported policy with no missing or unexpected weights, and
the exported tensors are the final GRPO checkpoint's (the CLIs' own export, compared here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_paper_smoke_runs_every_stage(tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "smoke"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0")
  result = subprocess.run([sys.executable, "-m", "atommem_jax.paper_smoke", "--workdir",
                           str(workdir), "--size", "test"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1500)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert "--config.mesh.fsdp=1" in result.stdout  # the overrides are printed
  with open(workdir / "paper_smoke.json") as f:
    summary = json.load(f)
  assert set(summary["seconds"]) == {"build hotpotqa", "build musique", "collect", "train",
                                     "evaluate", "export"}
  with open(workdir / "run" / "steps.json") as f:
    assert json.load(f)["sft"]["steps"] > 0  # SFT steps came from sft.epochs
  with open(workdir / "run" / "evaluations.json") as f:
    assert {"init", "sft", "grpo"} <= set(json.load(f))
  with open(workdir / "eval" / "summary.json") as f:
    assert json.load(f)["datasets"]
  assert (workdir / "run" / "checkpoints" / "grpo").is_dir()
  model, info = transformers.AutoModelForCausalLM.from_pretrained(
      workdir / "export", output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  final = transformers.AutoModelForCausalLM.from_pretrained(workdir / "run" / "hf")
  for (name, a), (_, b) in zip(model.state_dict().items(), final.state_dict().items()):
    assert torch.equal(a, b), name
