"""Ablation: no Delete action (<delete_memory> is invalid).

  --config configs/no_delete.py                 the paper setting (configs/base.py) without Delete
  --config configs/no_delete.py:tiny            the same ablation on the tiny synthetic task
  --config configs/no_delete.py:qwen3_8b_a800   the same ablation on any other config
"""

import os

from atommem_jax import config_lib


def get_config(base: str = "base"):
  c = config_lib.load_config_file(base, directory=os.path.dirname(__file__))
  c.env.enable_delete = False
  return c
