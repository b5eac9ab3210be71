"""`make demo`: the embedded default (configs/tiny.py's task and model shape) started from the
pretrained base shipped in models/tiny_base, loaded through `load_hf` as a Qwen3-8B
checkpoint would be (model.hf_dir; its own tokenizer files win over config field tokenizer).

The base was pretrained by configs/pretrain_tiny.py (models/tiny_base/README.md has the
command and its lookup-probe accuracy). On top of it: SFT on oracle trajectories, GRPO,
greedy evaluation on held-out synthetic contexts; `python -m atommem_jax.demo` also trains the
no-Update ablation (its own SFT with Update disabled). BENCHMARKS.md has the EM it reaches.
"""

import os

from atommem_jax import config_lib

BASE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models",
                        "tiny_base")


def get_config():
  c = config_lib.load_config_file("tiny", directory=os.path.dirname(__file__))
  c.model.hf_dir = BASE_DIR
  # Two SFT runs (the policy and the no-Update ablation) and GRPO share the run time on 2
  # cores: 300 SFT steps each (about 0.6 s a step) at lr 2e-3, and 10 GRPO steps (about 13 s a
  # step); each evaluation of 256 contexts takes about 35 s. Fewer SFT steps did not learn the
  # action format on seed 0 (250 at lr 2e-3: EM 0.008, 0.36 Creates an episode; 250 at 1e-3:
  # EM 0.000, no Create), so the demo takes 587-646 s on seeds 0-2, at or just over the 10
  # minutes aimed at.
  c.sft.update(steps=300, lr=2e-3)
  c.grpo.steps = 10
  return c
