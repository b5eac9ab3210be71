"""Model presets: one name, one model. "tiny" is the model of configs/tiny.py (the demo's),
"micro" the width-64 unit-test size."""

from __future__ import annotations

from atommem_jax import config_lib
from atommem_jax.model import config as model_config_lib

# (vocab, hidden, intermediate, layers, heads, kv heads, head_dim) of the demo's model as
# BENCHMARKS.md and README describe it, and of the width-64 model the unit tests use.
TINY = (2048, 128, 384, 2, 4, 2, 32)
MICRO = (1024, 64, 192, 2, 4, 2, 32)


def _shape(config: model_config_lib.Qwen3Config) -> tuple[int, ...]:
  return (config.vocab_size, config.hidden_size, config.intermediate_size,
          config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
          config.head_dim)


def test_the_tiny_preset_is_the_model_of_configs_tiny():
  config = config_lib.load_config_file("tiny")
  assert config.model.preset == "tiny"
  assert _shape(model_config_lib.preset("tiny")) == TINY
  assert _shape(config_lib.model_config(config)) == TINY  # no overrides needed on top


def test_the_micro_preset_is_the_width_64_test_model():
  assert _shape(model_config_lib.preset("micro")) == MICRO
  qwen_vocab = model_config_lib.preset("micro-qwen-vocab")
  assert _shape(qwen_vocab) == (151_936,) + MICRO[1:]
  assert "tiny-qwen-vocab" not in model_config_lib.PRESETS
