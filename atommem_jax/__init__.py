"""atommem-jax: AtomMem (learned atomic CRUD memory for LLM agents) in JAX/Flax.

Public entry points (stable names):
  load_hf(path, dtype=jnp.float32) -> (config, params)
  save_hf(config, params, path, tokenizer_dir=None)
  logits(config, params, token_ids, attention_mask=None) -> [B, T, V]
They are imported lazily so that light modules (data, agent) do not pull in JAX.
"""

__version__ = "0.1.0"

_LAZY = {
    "load_hf": ("atommem_jax.model.hf", "load_hf"),
    "save_hf": ("atommem_jax.model.hf", "save_hf"),
    "logits": ("atommem_jax.model.qwen3", "logits"),
    "Qwen3Config": ("atommem_jax.model.config", "Qwen3Config"),
}

__all__ = sorted(_LAZY)


def __getattr__(name):
  if name in _LAZY:
    import importlib  # pylint: disable=g-import-not-at-top
    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)
  raise AttributeError(f"module 'atommem_jax' has no attribute {name!r}")
