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
  # Two SFT runs (the policy and the no-Update ablation) share the 10 minutes: 400 steps
  # each, at a lower lr than from random init (5e-3) so that SFT keeps what pretraining
  # taught.
  c.sft.update(steps=400, lr=1e-3)
  return c
