"""Reference for the model tests: a random transformers.Qwen3ForCausalLM and its params.

Weights are redrawn at unit scale (norm scales around 1, non-zero biases) so every parameter
visibly moves the logits; the conversion to our stacked layout is written here from the HF
module shapes, independently of the production converter.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import transformers

from atommem_jax.model.config import Qwen3Config

TINY_ARCH = dict(vocab_size=1000, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16)


@dataclasses.dataclass
class Reference:
  config: Qwen3Config
  hf_model: transformers.Qwen3ForCausalLM
  params: dict[str, Any]  # numpy arrays in our layout

  def logits(self, token_ids: np.ndarray, attention_mask: np.ndarray | None = None,
             position_ids: np.ndarray | None = None) -> np.ndarray:
    """HF fp32 logits [B, T, V] for numpy inputs."""
    kwargs = {"input_ids": torch.from_numpy(np.asarray(token_ids, np.int64))}
    if attention_mask is not None:
      kwargs["attention_mask"] = torch.from_numpy(np.asarray(attention_mask, np.int64))
    if position_ids is not None:
      kwargs["position_ids"] = torch.from_numpy(np.asarray(position_ids, np.int64))
    with torch.no_grad():
      return self.hf_model(**kwargs).logits.float().numpy()


def make_reference(seed: int = 0, **arch) -> Reference:
  """Random HF model with architecture `arch` (Qwen3Config field names) and our params."""
  arch = {**TINY_ARCH, **arch}
  rope_theta = arch.pop("rope_theta", 1_000_000.0)
  hf_config = transformers.Qwen3Config(
      **arch, rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
      attn_implementation="eager", use_cache=False)
  torch.manual_seed(seed)
  hf_model = transformers.Qwen3ForCausalLM(hf_config).eval()
  _randomize(hf_model)
  config = Qwen3Config(**arch, rope_theta=rope_theta)
  return Reference(config, hf_model, to_params(hf_model.state_dict(), config))


def _randomize(model: torch.nn.Module):
  with torch.no_grad():
    for name, tensor in model.named_parameters():
      if name.endswith("norm.weight"):
        tensor.copy_(1.0 + 0.3 * torch.randn_like(tensor))
      elif name.endswith("bias"):
        tensor.copy_(0.3 * torch.randn_like(tensor))
      elif "embed_tokens" in name:
        tensor.copy_(torch.randn_like(tensor))
      else:  # [out, in] linear weights, lm_head included
        tensor.copy_(torch.randn_like(tensor) / tensor.shape[1] ** 0.5)


def to_params(state_dict: dict[str, torch.Tensor], config: Qwen3Config) -> dict[str, Any]:
  """HF state_dict -> our tree: kernels [in, out] split into heads, layers stacked on axis 0."""
  d, n, k, h = (config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                config.head_dim)

  def get(name):
    return state_dict[name].detach().float().numpy()

  def stack(fn):
    return np.stack([fn(f"model.layers.{i}.") for i in range(config.num_hidden_layers)])

  attn = {
      "q_proj": {"kernel": stack(lambda p: get(p + "self_attn.q_proj.weight").T.reshape(d, n, h))},
      "k_proj": {"kernel": stack(lambda p: get(p + "self_attn.k_proj.weight").T.reshape(d, k, h))},
      "v_proj": {"kernel": stack(lambda p: get(p + "self_attn.v_proj.weight").T.reshape(d, k, h))},
      "o_proj": {"kernel": stack(lambda p: get(p + "self_attn.o_proj.weight").T.reshape(n, h, d))},
      "q_norm": {"scale": stack(lambda p: get(p + "self_attn.q_norm.weight"))},
      "k_norm": {"scale": stack(lambda p: get(p + "self_attn.k_norm.weight"))},
  }
  if config.attention_bias:
    attn["q_proj"]["bias"] = stack(lambda p: get(p + "self_attn.q_proj.bias").reshape(n, h))
    attn["k_proj"]["bias"] = stack(lambda p: get(p + "self_attn.k_proj.bias").reshape(k, h))
    attn["v_proj"]["bias"] = stack(lambda p: get(p + "self_attn.v_proj.bias").reshape(k, h))
    attn["o_proj"]["bias"] = stack(lambda p: get(p + "self_attn.o_proj.bias"))
  params = {
      "embedder": {"embedding": get("model.embed_tokens.weight")},
      "layers": {
          "input_norm": {"scale": stack(lambda p: get(p + "input_layernorm.weight"))},
          "attn": attn,
          "post_attn_norm": {"scale": stack(lambda p: get(p + "post_attention_layernorm.weight"))},
          "mlp": {
              "gate_proj": {"kernel": stack(lambda p: get(p + "mlp.gate_proj.weight").T)},
              "up_proj": {"kernel": stack(lambda p: get(p + "mlp.up_proj.weight").T)},
              "down_proj": {"kernel": stack(lambda p: get(p + "mlp.down_proj.weight").T)},
          },
      },
      "final_norm": {"scale": get("model.norm.weight")},
  }
  if not config.tie_word_embeddings:
    params["lm_head"] = {"kernel": get("lm_head.weight").T}
  return params
