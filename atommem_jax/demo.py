r"""`make demo`: the training job on the embedded default config, plus the no-Update ablation.

  python -m atommem_jax.demo [--config configs/demo.py] [--workdir workdir/demo] \
      [--config.seed=N] [--ablation=sft|eval|none]

1. `atommem_jax.train.loop.run` on the config in --workdir: the pretrained tiny base shipped
   in models/tiny_base (configs/demo.py's model.hf_dir, with its own tokenizer), SFT on
   oracle trajectories, GRPO, greedy evaluation on held-out synthetic contexts (after SFT,
   after GRPO; not the starting policy) and HF export.
2. The no-Update ablation. "sft" (the default, in --workdir/no_update): trained as an
   ablation, the same SFT on oracle trajectories of an environment with Update disabled,
   evaluated with Update disabled (no GRPO). "eval" (cheaper): the policy after SFT evaluated
   in an environment that refuses Update (its Update actions count as invalid): what Update
   is worth to a policy trained with it, not a policy trained without it.

Prints the EM table (with the operation counts per episode) and the wall times; writes them
to --workdir/demo_results.json. A rerun resumes (or reuses) both runs from their checkpoints.
"""

from __future__ import annotations

import json
import time
from typing import Sequence

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


def main(argv: Sequence[str]) -> None:
  del argv  # cli.run refuses positional arguments
  config = cli.load_config(PROG)
  from atommem_jax.train import loop  # pylint: disable=g-import-not-at-top
  started = time.perf_counter()
  # The starting policy is not evaluated (about 15 s of the demo's 12 minutes on 2 cores): the
  # earlier base scored EM 0.000 as an agent (BENCHMARKS.md); configs/tiny.py's random init,
  # 0.000.
  main_run = loop.run(config, _WORKDIR.value, evaluate_init=False)
  rows = loop.table_rows(config, main_run["evaluations"])
  seconds = {"main": main_run["seconds"]}
  ablation = config.copy_and_resolve_references()
  ablation.env.enable_update = False
  if _ABLATION.value == "sft":
    ablation.grpo.steps = 0
    ablation_run = loop.run(ablation, fileio.join(_WORKDIR.value, "no_update"),
                            evaluate_init=False)
    rows.append(("no_update (own SFT)", ablation_run["evaluations"]["sft"]))
    seconds["no_update"] = ablation_run["seconds"]
  elif _ABLATION.value == "eval":
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
