r"""`make demo`: the training job on the embedded default config, plus the no-Update ablation.

  python -m atommem_jax.demo [--config configs/demo.py] [--workdir workdir/demo] \
      [--config.seed=N] [--ablation=sft|eval|none]

1. `atommem_jax.train.loop.run` on the config in --workdir: the pretrained tiny base shipped
   in models/tiny_base (configs/demo.py's model.hf_dir, with its own tokenizer), SFT on
   oracle trajectories, GRPO, greedy evaluation on held-out synthetic contexts (after SFT,
   after GRPO; not the starting policy) and HF export.
2. The no-Update ablation. "sft" (the default, in --workdir/no_update): trained as an
   ablation, the same SFT on oracle trajectories of an environment with Update disabled,
   evaluated with Update disabled (no GRPO). It runs in a second process beside the main
   run, with the same devices (its log: --workdir/no_update.log): two processes keep the 2
   cores of the embedded default's CPU busier than one (BENCHMARKS.md). "eval" (cheaper):
   the policy after SFT evaluated in an environment that refuses Update (its Update actions
   count as invalid): what Update is worth to a policy trained with it, not a policy trained
   without it.

Prints the EM table (with the operation counts per episode) and the wall times; writes them
to --workdir/demo_results.json. A rerun resumes (or reuses) both runs from their checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from typing import Any, Sequence

from absl import flags
from ml_collections import config_flags

from atommem_jax import cli
from atommem_jax import fileio

PROG = "atommem_jax.demo"

config_flags.DEFINE_config_file("config", "configs/demo.py", "experiment config")
_WORKDIR = flags.DEFINE_string("workdir", "workdir/demo", "run directory")
_ABLATION = flags.DEFINE_enum("ablation", "sft", ["sft", "eval", "none"],
                              "no-Update ablation: a second SFT without Update, the SFT policy "
                              "evaluated without Update, or none")


def _exit_with_parent(poll_seconds: float = 1.0) -> None:
  """Ends this process, from a daemon thread, once the process that started it is gone.

  A `kill` of the demo's process (not of its process group, as Ctrl-C is) would otherwise
  leave the ablation training on, holding a core, for minutes; its checkpoints stay whole
  (orbax commits each one by a rename), so a rerun resumes it.
  """
  parent = os.getppid()

  def watch() -> None:
    while os.getppid() == parent:
      time.sleep(poll_seconds)
    os._exit(1)  # pylint: disable=protected-access

  threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _train_ablation(config, workdir: str, log_path: str) -> dict[str, Any]:
  """The second process: `loop.run` of the ablation, its output into `log_path`."""
  _exit_with_parent()
  log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  sys.stdout.flush()
  sys.stderr.flush()
  os.dup2(log, 1)
  os.dup2(log, 2)
  from atommem_jax.train import loop  # pylint: disable=g-import-not-at-top
  run = loop.run(config, workdir, evaluate_init=False)
  return {"evaluations": run["evaluations"], "seconds": run["seconds"]}


def _log_path(workdir: str) -> str:
  """--workdir/no_update.log, or a local temporary file when the workdir is remote."""
  if "://" not in workdir:
    os.makedirs(workdir, exist_ok=True)
    return os.path.join(workdir, "no_update.log")
  handle, path = tempfile.mkstemp(prefix="no_update_", suffix=".log")
  os.close(handle)
  return path


def main(argv: Sequence[str]) -> None:
  del argv  # cli.run refuses positional arguments
  config = cli.load_config(PROG)
  started = time.perf_counter()
  ablation = config.copy_and_resolve_references()
  ablation.env.enable_update = False
  ablation.grpo.steps = 0
  with contextlib.ExitStack() as stack:
    pending = None
    if _ABLATION.value == "sft":
      # spawn, not fork: the child imports JAX itself, with the XLA_FLAGS the config set.
      pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(1))
      log_path = _log_path(_WORKDIR.value)
      pending = pool.apply_async(
          _train_ablation, (ablation, fileio.join(_WORKDIR.value, "no_update"), log_path))
      print(f"no_update ablation: its own SFT runs in a second process; log {log_path}",
            flush=True)
    from atommem_jax.train import loop  # pylint: disable=g-import-not-at-top
    # The starting policy is not evaluated (about 15 s of the demo's 10 minutes on 2 cores):
    # the earlier base scored EM 0.000 as an agent (BENCHMARKS.md); configs/tiny.py's random
    # init, 0.000.
    main_run = loop.run(config, _WORKDIR.value, evaluate_init=False)
    rows = loop.table_rows(config, main_run["evaluations"])
    seconds = {"main": main_run["seconds"]}
    if pending is not None:
      if not pending.ready():
        print(f"waiting for the no_update ablation (log {log_path})", flush=True)
      try:
        ablation_run = pending.get()
      except Exception as e:  # pylint: disable=broad-except
        raise RuntimeError(f"the no_update ablation failed: {e} (log {log_path})") from e
      rows.append(("no_update (own SFT)", ablation_run["evaluations"]["sft"]))
      seconds["no_update"] = ablation_run["seconds"]
  if _ABLATION.value == "eval":
    ablation_started = time.perf_counter()
    summary = loop.evaluate_without_update(config, _WORKDIR.value)
    rows.append(("SFT, Update refused", summary))
    seconds["no_update"] = time.perf_counter() - ablation_started
  seconds["total"] = time.perf_counter() - started
  print(f"\nDemo (seed {config.seed}): EM on {config.data.synthetic.eval_contexts} held-out "
        "synthetic episodes, greedy decoding")
  print(loop.format_table(rows))
  print("wall time: " + ", ".join(f"{name} {value:.0f}s" for name, value in seconds.items()))
  fileio.write_text(fileio.join(_WORKDIR.value, "demo_results.json"),
                    json.dumps({"seed": config.seed, "rows": dict(rows), "seconds": seconds},
                               indent=2))


if __name__ == "__main__":
  cli.run(main, PROG)
