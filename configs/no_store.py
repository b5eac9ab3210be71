"""Ablation, MemAgent-style: no long-term store (no Create/Read/Update/Delete), scratchpad only.

  --config configs/no_store.py                 the paper setting (configs/base.py) without the store
  --config configs/no_store.py:tiny            the same ablation on the tiny synthetic task
  --config configs/no_store.py:qwen3_8b_a800   the same ablation on any other config
"""

import os

from atommem_jax import config_lib


def get_config(base: str = "base"):
  c = config_lib.load_config_file(base, directory=os.path.dirname(__file__))
  c.env.enable_store = False
  c.env.enable_scratchpad = True
  return c
