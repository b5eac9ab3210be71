"""The compiled decode step's memory traffic, read from XLA's optimized HLO.

A decode step writes one token's k/v per layer. The stacked cache [L, B, S, K, H] travels
through the layer scan as a loop-carried buffer, updated in place; a scan output would be a
fresh buffer, zero-filled (a broadcast) and copied out at every step, which the CPU profile
of the 0.1B preset's decode showed as a fifth of a step's time. The CPU sampler's decode
loop reads per-layer weights (qwen3.unstack_layers) instead of slicing the stacked ones,
which XLA:CPU copies at every step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atommem_jax.model import attention
from atommem_jax.model import qwen3
from atommem_jax.model.config import Qwen3Config

# head_dim 16: with 8, XLA:CPU's fusion choices hide the stacked-cache copy that
# test_decode_attention_over_a_stacked_cache_would_copy_it must see.
CONFIG = Qwen3Config(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                     bos_token_id=None, eos_token_id=2)


def _whole_cache_copies(params, cache) -> list[str]:
  """Compiles a cache-donated decode step; its instructions that fill or copy a whole cache
  (every layer's [L, B, S, K, H], or one layer's [B, S, K, H] of a per-layer cache)."""

  @functools.partial(jax.jit, donate_argnums=(1,))
  def step(params, cache, token, position):
    return qwen3.forward(CONFIG, params, token, position, cache=cache)

  token = jnp.ones((2, 1), jnp.int32)
  text = step.lower(params, cache, token, token).compile().as_text()
  shape = cache["k"][0].shape if isinstance(cache["k"], tuple) else cache["k"].shape
  cache_shape = "f32[" + ",".join(map(str, shape)) + "]"
  whole_cache = [line.split("=", 1)[1].strip() for line in text.splitlines()
                 if "=" in line and line.split("=", 1)[1].strip().startswith(cache_shape)]
  assert any("dynamic-update-slice" in line for line in whole_cache)  # the shape is found
  return [line[:160] for line in whole_cache
          if " copy(" in line or " broadcast(" in line or "broadcast" in
          line.split("calls=")[-1].split(",")[0]]


@pytest.mark.parametrize("layout", ["stacked", "unstacked params", "unstacked params and cache"])
def test_decode_step_never_fills_or_copies_a_whole_cache(layout):
  params = qwen3.init_params(CONFIG, jax.random.key(0))
  cache = qwen3.init_cache(CONFIG, batch_size=2, max_len=40)
  if layout != "stacked":
    params = qwen3.unstack_layers(params)
  if layout == "unstacked params and cache":
    cache = qwen3.unstack_cache(cache)
  assert _whole_cache_copies(params, cache) == []


def test_decode_attention_over_a_stacked_cache_would_copy_it(monkeypatch):
  """Why a stacked cache keeps blockwise at T = 1 on CPU: decode_attention fed the layer's
  slice of the stack makes XLA fold the read into the update and copy the whole stack."""
  real = attention.attention
  monkeypatch.setattr(attention, "attention",
                      lambda *args, stacked_cache=False, **kwargs: real(*args, **kwargs))
  params = qwen3.init_params(CONFIG, jax.random.key(0))
  assert _whole_cache_copies(params, qwen3.init_cache(CONFIG, batch_size=2, max_len=40))


def test_cached_decode_steps_equal_the_full_forward():
  """Token by token through the cache (the in-place layer updates) against one forward."""
  params = qwen3.init_params(CONFIG, jax.random.key(1))
  tokens = jnp.asarray(np.random.RandomState(0).randint(3, 97, (2, 6)), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(6), (2, 6))
  full, _ = jax.jit(functools.partial(qwen3.forward, CONFIG))(params, tokens, positions)
  cache = qwen3.init_cache(CONFIG, batch_size=2, max_len=8)
  step = jax.jit(lambda p, c, t, pos: qwen3.forward(CONFIG, p, t, pos, cache=c))
  stepped = []
  for t in range(6):
    logits, cache = step(params, cache, tokens[:, t:t + 1], positions[:, t:t + 1])
    stepped.append(logits[:, 0])
  np.testing.assert_allclose(np.stack(stepped, axis=1), full, rtol=1e-5, atol=1e-5)


def _layer_weight_producers(text: str, shape: str) -> list[str]:
  """Instructions of a compiled HLO text, parameters aside, that produce an array of this
  weight shape (a slice or copy of the weights)."""
  return [line.split("=", 1)[0].strip() for line in text.splitlines()
          if "=" in line and line.split("=", 1)[1].strip().startswith(shape + "{")
          and " parameter(" not in line]


def test_unstacked_decode_step_reads_the_weights_in_place():
  """With qwen3.unstack_layers the step slices nothing out of the weights; with the stack,
  XLA:CPU copies each layer's slice at every step (the check sees them)."""
  params = qwen3.init_params(CONFIG, jax.random.key(0))
  cache = qwen3.init_cache(CONFIG, batch_size=2, max_len=40)
  token = jnp.ones((2, 1), jnp.int32)
  step = jax.jit(lambda p, c, t: qwen3.forward(CONFIG, p, t, t, cache=c))
  mlp = f"f32[{CONFIG.hidden_size},{CONFIG.intermediate_size}]"  # gate/up kernels
  stacked = step.lower(params, cache, token).compile().as_text()
  assert _layer_weight_producers(stacked, mlp)
  unstacked = qwen3.unstack_layers(params)
  assert _layer_weight_producers(step.lower(unstacked, cache, token).compile().as_text(),
                                 mlp) == []


def test_unstacked_layers_equal_the_stack():
  """Prefill and cached decode steps with per-layer params (and per-layer cache) against the
  stacked scan."""
  params = qwen3.init_params(CONFIG, jax.random.key(2))
  unstacked = qwen3.unstack_layers(params)
  assert "layers" not in unstacked and len(unstacked) == len(params) - 1 + 3
  tokens = jnp.asarray(np.random.RandomState(1).randint(3, 97, (2, 7)), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(7), (2, 7))
  run = jax.jit(lambda p, c, t, pos: qwen3.forward(CONFIG, p, t, pos, cache=c))
  empty = qwen3.init_cache(CONFIG, batch_size=2, max_len=8)
  layouts = [(params, empty), (unstacked, empty), (unstacked, qwen3.unstack_cache(empty))]
  caches, outputs = [cache for _, cache in layouts], [[] for _ in layouts]
  for start, stop in ((0, 4), (4, 5), (5, 6), (6, 7)):
    for i, (p, _) in enumerate(layouts):
      logits, caches[i] = run(p, caches[i], tokens[:, start:stop], positions[:, start:stop])
      outputs[i].append(logits)
  for i in (1, 2):
    np.testing.assert_allclose(np.concatenate(outputs[i], 1), np.concatenate(outputs[0], 1),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.stack(caches[i]["v"]), caches[0]["v"], rtol=1e-6, atol=1e-6)
  assert caches[2]["index"] == 7 and len(caches[2]["k"]) == CONFIG.num_hidden_layers
  with pytest.raises(ValueError, match="per-layer KV cache.*unstack_layers"):
    qwen3.forward(CONFIG, params, tokens[:, :1], positions[:, :1],
                  cache=qwen3.unstack_cache(empty))
