"""bench/run_all.py (`make bench`): it finds every benchmark, and each one starts and knows the
flags of its quick run."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))
import run_all  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_every_benchmark_script_is_run_and_quick_arguments_name_real_scripts():
  paths = glob.glob(os.path.join(REPO, "bench", "*.py"))
  scripts = sorted(os.path.basename(p)[:-3] for p in paths if not p.endswith("run_all.py"))
  assert run_all.benchmarks() == scripts
  assert set(run_all.QUICK) <= set(scripts)


def test_only_refuses_an_unknown_benchmark():
  result = subprocess.run([sys.executable, os.path.join(REPO, "bench", "run_all.py"),
                           "--only", "bench_nothing"], capture_output=True, text=True,
                          timeout=60)
  assert result.returncode == 2 and "no benchmark ['bench_nothing']" in result.stderr


@pytest.mark.slow
def test_each_benchmark_starts_and_knows_its_quick_flags():
  result = subprocess.run([sys.executable, os.path.join(REPO, "bench", "run_all.py"), "--check"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  for name in run_all.benchmarks():
    assert f"=== {name}: ok" in result.stdout
