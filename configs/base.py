"""The paper's setting with every field at its default (see atommem_jax/config_lib.py)."""

from atommem_jax import config_lib


def get_config():
  return config_lib.base_config()
