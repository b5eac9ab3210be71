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

from atommem_jax.model import qwen3
from atommem_jax.model.config import Qwen3Config

CONFIG = Qwen3Config(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                     bos_token_id=None, eos_token_id=2)


@pytest.mark.parametrize("unstacked", [False, True])
def test_decode_step_never_fills_or_copies_a_whole_cache(unstacked):
  params = qwen3.init_params(CONFIG, jax.random.key(0))
  if unstacked:
    params = qwen3.unstack_layers(params)
  cache = qwen3.init_cache(CONFIG, batch_size=2, max_len=40)

  @functools.partial(jax.jit, donate_argnums=(1,))
  def step(params, cache, token, position):
    return qwen3.forward(CONFIG, params, token, position, cache=cache)

  token = jnp.ones((2, 1), jnp.int32)
  text = step.lower(params, cache, token, token).compile().as_text()
  cache_shape = "f32[" + ",".join(map(str, cache["k"].shape)) + "]"
  whole_cache = [line.split("=", 1)[1].strip() for line in text.splitlines()
                 if "=" in line and line.split("=", 1)[1].strip().startswith(cache_shape)]
  assert any("dynamic-update-slice" in line for line in whole_cache)  # the shape is found
  filled_or_copied = [line[:160] for line in whole_cache
                      if " copy(" in line or " broadcast(" in line or "broadcast" in
                      line.split("calls=")[-1].split(",")[0]]
  assert not filled_or_copied, filled_or_copied


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
  """Prefill and cached decode steps with per-layer params against the stacked scan."""
  params = qwen3.init_params(CONFIG, jax.random.key(2))
  unstacked = qwen3.unstack_layers(params)
  assert "layers" not in unstacked and len(unstacked) == len(params) - 1 + 3
  tokens = jnp.asarray(np.random.RandomState(1).randint(3, 97, (2, 7)), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(7), (2, 7))
  run = jax.jit(lambda p, c, t, pos: qwen3.forward(CONFIG, p, t, pos, cache=c))
  caches = [qwen3.init_cache(CONFIG, batch_size=2, max_len=8) for _ in range(2)]
  outputs = [[], []]
  for start, stop in ((0, 4), (4, 5), (5, 6), (6, 7)):
    for i, p in enumerate((params, unstacked)):
      logits, caches[i] = run(p, caches[i], tokens[:, start:stop], positions[:, start:stop])
      outputs[i].append(logits)
  np.testing.assert_allclose(np.concatenate(outputs[1], 1), np.concatenate(outputs[0], 1),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(caches[1]["k"], caches[0]["k"], rtol=1e-6, atol=1e-6)
