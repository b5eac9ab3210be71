"""Ablation: no Update action (<modify_memory> is invalid); the paper reports -6.4 EM on HotpotQA.

  --config configs/no_update.py                 the paper setting (configs/base.py) without Update
  --config configs/no_update.py:tiny            the same ablation on the tiny synthetic task
  --config configs/no_update.py:qwen3_8b_a800   the same ablation on any other config
"""

import os

from atommem_jax import config_lib


def get_config(base: str = "base"):
  c = config_lib.load_config_file(base, directory=os.path.dirname(__file__))
  c.env.enable_update = False
  return c
