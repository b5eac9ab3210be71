"""Qwen3 (dense) configuration: size presets and the mapping to/from Hugging Face config.json.

`Qwen3Config` is a frozen dataclass so it can be a static argument of jitted functions.
Architecture fields mirror `transformers.Qwen3Config`; the execution fields (dtypes,
remat, scan, attention) are ours and never written to config.json.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

from atommem_jax.model import _hf_config

_DTYPES = {
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
}

REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims")
# How attention is computed (atommem_jax.model.attention); "auto" picks per platform.
ATTENTION_IMPLEMENTATIONS = ("auto", "dense", "blockwise", "cudnn", "splash")


@dataclasses.dataclass(frozen=True)
class Qwen3Config:
  """Qwen3 dense decoder. Letters used in einsums: V vocab, D model, N query heads,
  K kv heads, H head dim, F mlp hidden, L layers."""

  vocab_size: int
  hidden_size: int  # D
  intermediate_size: int  # F
  num_hidden_layers: int  # L
  num_attention_heads: int  # N
  num_key_value_heads: int  # K
  head_dim: int  # H, independent of D / N
  rope_theta: float = 1_000_000.0
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  max_position_embeddings: int = 40_960
  bos_token_id: int | None = 151_643
  eos_token_id: int | None = 151_645
  pad_token_id: int | None = None
  # Execution settings (not part of the HF architecture).
  param_dtype: str = "float32"
  dtype: str = "float32"  # compute dtype for matmuls; softmax and logits are always fp32
  remat: str = "none"  # one of REMAT_POLICIES, applied per layer
  scan_layers: bool = True  # lax.scan over the stacked layers; False unrolls them
  attention: str = "auto"  # one of ATTENTION_IMPLEMENTATIONS
  # Query / key tile of the blockwise and splash kernels (auto on CPU caps it at 64).
  attention_block_q: int = 512
  attention_block_k: int = 512

  def __post_init__(self):
    if self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(
          f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
          f"num_key_value_heads ({self.num_key_value_heads})")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"remat={self.remat!r}; expected one of {REMAT_POLICIES}")
    if self.attention not in ATTENTION_IMPLEMENTATIONS:
      raise ValueError(
          f"attention={self.attention!r}; expected one of {ATTENTION_IMPLEMENTATIONS}")
    for field in ("attention_block_q", "attention_block_k"):
      if getattr(self, field) < 1:
        raise ValueError(f"{field}={getattr(self, field)}; must be a positive number of tokens")
    for field in ("param_dtype", "dtype"):
      if getattr(self, field) not in _DTYPES:
        raise ValueError(f"{field}={getattr(self, field)!r}; expected one of {sorted(_DTYPES)}")

  @property
  def num_groups(self) -> int:  # G: query heads per kv head
    return self.num_attention_heads // self.num_key_value_heads

  @property
  def jnp_param_dtype(self):
    return _DTYPES[self.param_dtype]

  @property
  def jnp_dtype(self):
    return _DTYPES[self.dtype]

  def replace(self, **changes) -> "Qwen3Config":
    return dataclasses.replace(self, **changes)

  def num_params(self) -> int:
    d, f, l, v = self.hidden_size, self.intermediate_size, self.num_hidden_layers, self.vocab_size
    n, k, h = self.num_attention_heads, self.num_key_value_heads, self.head_dim
    attn = d * h * (n + 2 * k) + n * h * d + 2 * h
    if self.attention_bias:
      attn += h * (n + 2 * k) + d
    layer = attn + 3 * d * f + 2 * d
    return v * d * (1 if self.tie_word_embeddings else 2) + l * layer + d

  # --- Hugging Face config.json ------------------------------------------------------------

  @classmethod
  def from_hf_dict(cls, hf: Mapping[str, Any], source: str = "config.json", **overrides) -> "Qwen3Config":
    """Builds a config from a HF Qwen3 config dict (transformers 4 or 5 layout).

    Raises:
      ValueError: naming `source` and the field, for a value of the wrong type or range.
    """
    _hf_config.check(hf, source)
    archs = hf.get("architectures") or []
    model_type = hf.get("model_type")
    if model_type not in (None, "qwen3") or (archs and not any(a.startswith("Qwen3") for a in archs)):
      raise ValueError(
          f"{source}: model_type={model_type!r}, architectures={archs!r}; only dense Qwen3 "
          "(model_type 'qwen3', e.g. Qwen3ForCausalLM) is supported")
    if hf.get("hidden_act", "silu") != "silu":
      raise ValueError(
          f"{source}: hidden_act={hf['hidden_act']!r} is not supported (Qwen3 uses 'silu')")
    if hf.get("use_sliding_window"):
      raise ValueError(f"{source}: use_sliding_window=true is not supported")
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads") if k not in hf]
    if missing:
      raise ValueError(f"{source}: missing required field(s) {missing}")
    rope_theta = hf.get("rope_theta")
    rope_parameters = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope_theta is None:
      rope_theta = rope_parameters.get("rope_theta", 10_000.0)
    rope_type = rope_parameters.get("rope_type", rope_parameters.get("type", "default"))
    if rope_type not in ("default", None):
      raise ValueError(f"{source}: rope_type={rope_type!r} is not supported (only 'default')")
    n = hf["num_attention_heads"]
    eos = hf.get("eos_token_id", 151_645)
    if isinstance(eos, (list, tuple)):
      eos = eos[0]
    kwargs = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_hidden_layers=hf["num_hidden_layers"],
        num_attention_heads=n,
        num_key_value_heads=hf.get("num_key_value_heads") or n,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // n,
        rope_theta=float(rope_theta),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=bool(hf.get("attention_bias", False)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 40_960)),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=eos,
        pad_token_id=hf.get("pad_token_id"),
    )
    kwargs.update(overrides)
    return cls(**kwargs)

  def to_hf_dict(self, torch_dtype: str = "float32") -> dict[str, Any]:
    """config.json for transformers (writes both rope_theta layouts, 4.x and 5.x)."""
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_hidden_layers,
        "num_attention_heads": self.num_attention_heads,
        "num_key_value_heads": self.num_key_value_heads,
        "head_dim": self.head_dim,
        "hidden_act": "silu",
        "rope_theta": self.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
        "rms_norm_eps": self.rms_norm_eps,
        "tie_word_embeddings": self.tie_word_embeddings,
        "attention_bias": self.attention_bias,
        "attention_dropout": 0.0,
        "max_position_embeddings": self.max_position_embeddings,
        "use_sliding_window": False,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": self.eos_token_id,
        "pad_token_id": self.pad_token_id,
        "torch_dtype": torch_dtype,
        "dtype": torch_dtype,
        "initializer_range": 0.02,
        "use_cache": True,
    }


def _preset(v, d, f, l, n, k, tie, **kw) -> Qwen3Config:
  return Qwen3Config(vocab_size=v, hidden_size=d, intermediate_size=f, num_hidden_layers=l,
                     num_attention_heads=n, num_key_value_heads=k, head_dim=128,
                     tie_word_embeddings=tie, **kw)


# Shapes from the official Qwen3 config.json files.
PRESETS: dict[str, Qwen3Config] = {
    "qwen3-0.6b": _preset(151_936, 1024, 3072, 28, 16, 8, True),
    "qwen3-1.7b": _preset(151_936, 2048, 6144, 28, 16, 8, True),
    "qwen3-4b": _preset(151_936, 2560, 9728, 36, 32, 8, True),
    "qwen3-8b": _preset(151_936, 4096, 12_288, 36, 32, 8, False),
    "qwen3-14b": _preset(151_936, 5120, 17_408, 40, 40, 8, False),
    "qwen3-32b": _preset(151_936, 5120, 25_600, 64, 64, 8, False),
    "qwen3-embedding-0.6b": _preset(151_669, 1024, 3072, 28, 16, 8, True, eos_token_id=151_643,
                                    max_position_embeddings=32_768),
    # ~0.1B parameters with the real vocabulary: benchmarks and CPU smoke runs.
    "qwen3-0.1b": Qwen3Config(vocab_size=151_936, hidden_size=512, intermediate_size=1536,
                              num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                              head_dim=64, tie_word_embeddings=True),
    # The model of configs/tiny.py (`make demo` on a 2-core CPU): its 2048-entry vocabulary
    # makes every synthetic name one token of the synthetic BPE.
    "tiny": Qwen3Config(vocab_size=2048, hidden_size=128, intermediate_size=384,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=32, tie_word_embeddings=True, bos_token_id=None, eos_token_id=2,
                        pad_token_id=0),
    # The unit-test size (width 64): the smallest model that still has every part.
    "micro": Qwen3Config(vocab_size=1024, hidden_size=64, intermediate_size=192,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=32, tie_word_embeddings=True, bos_token_id=None,
                         eos_token_id=2, pad_token_id=0),
    # The unit-test size with the real Qwen3 vocabulary (runs with the real tokenizer).
    "micro-qwen-vocab": Qwen3Config(vocab_size=151_936, hidden_size=64, intermediate_size=192,
                                    num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, head_dim=32, tie_word_embeddings=True),
}


def preset(name: str, **overrides) -> Qwen3Config:
  """Returns the named preset, with execution fields (dtypes, remat, scan) overridden."""
  if name not in PRESETS:
    raise KeyError(f"unknown Qwen3 preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)
