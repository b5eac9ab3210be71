"""Ablation: top-3 retrieval per Read instead of the paper's 6 (same retrieved-token budget).

  --config configs/topk3.py                 the paper setting (configs/base.py) with top-k 3
  --config configs/topk3.py:tiny            the tiny synthetic task with top-k 3
  --config configs/topk3.py:qwen3_8b_a800   the same ablation on any other config
"""

import os

from atommem_jax import config_lib


def get_config(base: str = "base"):
  c = config_lib.load_config_file(base, directory=os.path.dirname(__file__))
  c.env.top_k = 3
  return c
