"""Qwen3 forward against transformers.Qwen3ForCausalLM (random tiny configs, fp32)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atommem_jax.model import qwen3
from _hf_reference import make_reference

ATOL = 1e-4

_logits = jax.jit(qwen3.logits, static_argnums=0)


@functools.partial(jax.jit, static_argnums=0)
def _forward(config, params, token_ids, positions, attention_mask, segment_ids):
  return qwen3.forward(config, params, token_ids, positions, attention_mask=attention_mask,
                       segment_ids=segment_ids)[0]


@functools.partial(jax.jit, static_argnums=0)
def _cached_step(config, params, token_ids, positions, attention_mask, cache):
  return qwen3.forward(config, params, token_ids, positions, attention_mask=attention_mask,
                       cache=cache)


def _tokens(shape, seed=0, vocab=1000):
  return np.random.RandomState(seed).randint(0, vocab, shape).astype(np.int32)


def _left_padded_mask(lengths, total):
  return np.array([[0] * (total - n) + [1] * n for n in lengths], np.int32)


@pytest.mark.parametrize("arch", [
    dict(),  # untied, GQA group 2, rope_theta 1e6, eps 1e-6
    dict(tie_word_embeddings=True, attention_bias=True, rope_theta=10_000.0),
    dict(num_key_value_heads=4, rope_theta=500_000.0, rms_norm_eps=1e-5),  # group 1 (MHA)
    dict(head_dim=32, num_key_value_heads=1, tie_word_embeddings=True),  # H > D/N, group 4
], ids=["untied", "tied_bias_theta1e4", "mha_theta5e5_eps1e-5", "wide_head_group4"])
def test_logits_match_hf(arch):
  ref = make_reference(**arch)
  ids = _tokens((2, 13))  # odd length, vocab 1000 (not a multiple of 128)
  ours = np.asarray(_logits(ref.config, ref.params, ids))
  assert ours.dtype == np.float32
  np.testing.assert_allclose(ours, ref.logits(ids), rtol=0, atol=ATOL)


def test_rope_theta_from_config_is_used():
  ref = make_reference(rope_theta=10_000.0)
  ids = _tokens((1, 13))
  expected = ref.logits(ids)
  np.testing.assert_allclose(np.asarray(_logits(ref.config, ref.params, ids)), expected,
                             rtol=0, atol=ATOL)
  wrong = np.asarray(_logits(ref.config.replace(rope_theta=1_000_000.0), ref.params, ids))
  assert np.abs(wrong - expected).max() > 1e-2


def test_left_padding_matches_hf_with_same_mask():
  ref = make_reference(seed=1)
  ids = _tokens((3, 11), seed=1)
  mask = _left_padded_mask([11, 7, 2], 11)
  position_ids = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
  ours = np.asarray(_logits(ref.config, ref.params, ids, mask))
  theirs = ref.logits(ids, mask, position_ids)
  real = mask.astype(bool)
  np.testing.assert_allclose(ours[real], theirs[real], rtol=0, atol=ATOL)
  # Each row alone, unpadded, gives the same logits at its real tokens.
  for row, n in enumerate([11, 7, 2]):
    np.testing.assert_allclose(ours[row, -n:], ref.logits(ids[row:row + 1, -n:])[0],
                               rtol=0, atol=ATOL)


def test_packed_segments_match_separate_hf_forwards():
  ref = make_reference(seed=2)
  segment_ids = np.array([[1] * 5 + [2] * 6 + [0] * 2, [1] * 9 + [2] * 4], np.int32)
  ids = _tokens(segment_ids.shape, seed=2)
  positions = np.zeros_like(segment_ids)
  for row in range(len(segment_ids)):
    for seg in (1, 2):
      where = segment_ids[row] == seg
      positions[row, where] = np.arange(where.sum())
  ours = np.asarray(_forward(ref.config, ref.params, ids, positions, None, segment_ids))
  for row in range(len(segment_ids)):
    for seg in (1, 2):
      where = segment_ids[row] == seg
      expected = ref.logits(ids[row:row + 1, where])[0]
      np.testing.assert_allclose(ours[row, where], expected, rtol=0, atol=ATOL)


def test_bf16_compute_within_relative_bound():
  ref = make_reference(seed=3)
  ids = _tokens((2, 13), seed=3)
  expected = ref.logits(ids)
  ours = np.asarray(_logits(ref.config.replace(dtype="bfloat16"), ref.params, ids))
  assert ours.dtype == np.float32
  assert np.abs(ours - expected).max() / np.abs(expected).max() <= 2e-2


def test_params_in_param_dtype_and_contract_layout():
  config = make_reference().config.replace(param_dtype="bfloat16", attention_bias=True)
  params = qwen3.init_params(config, jax.random.key(0))
  L, D, N, K, H, F, V = 2, 64, 4, 2, 16, 96, 1000
  expected = {
      "embedder": {"embedding": (V, D)},
      "layers": {
          "input_norm": {"scale": (L, D)},
          "attn": {
              "q_proj": {"kernel": (L, D, N, H), "bias": (L, N, H)},
              "k_proj": {"kernel": (L, D, K, H), "bias": (L, K, H)},
              "v_proj": {"kernel": (L, D, K, H), "bias": (L, K, H)},
              "o_proj": {"kernel": (L, N, H, D), "bias": (L, D)},
              "q_norm": {"scale": (L, H)},
              "k_norm": {"scale": (L, H)},
          },
          "post_attn_norm": {"scale": (L, D)},
          "mlp": {"gate_proj": {"kernel": (L, D, F)}, "up_proj": {"kernel": (L, D, F)},
                  "down_proj": {"kernel": (L, F, D)}},
      },
      "final_norm": {"scale": (D,)},
      "lm_head": {"kernel": (D, V)},
  }
  assert jax.tree.map(lambda x: x.shape, params) == jax.tree.map(
      tuple, expected, is_leaf=lambda x: isinstance(x, tuple))
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  assert np.all(np.asarray(params["layers"]["attn"]["q_norm"]["scale"]) == 1)
  assert np.all(np.asarray(params["layers"]["attn"]["o_proj"]["bias"]) == 0)
  layer0, layer1 = params["layers"]["mlp"]["up_proj"]["kernel"]
  assert not np.array_equal(np.asarray(layer0), np.asarray(layer1))


def test_param_logical_axes_follow_contract():
  config = make_reference().config.replace(attention_bias=True)
  axes = qwen3.param_logical_axes(config)
  assert "lm_head" not in qwen3.param_logical_axes(config.replace(tie_word_embeddings=True))
  assert axes["embedder"]["embedding"] == ("vocab", "embed")
  assert axes["lm_head"]["kernel"] == ("embed", "vocab")
  assert axes["final_norm"]["scale"] == ("norm",)
  layers = axes["layers"]
  assert layers["input_norm"]["scale"] == ("layers", "norm")
  assert layers["attn"]["q_proj"]["kernel"] == ("layers", "embed", "q_heads", "head_dim")
  assert layers["attn"]["q_proj"]["bias"] == ("layers", "q_heads", "head_dim")
  assert layers["attn"]["k_proj"]["kernel"] == ("layers", "embed", "kv_heads", "head_dim")
  assert layers["attn"]["o_proj"]["kernel"] == ("layers", "q_heads", "head_dim", "embed")
  assert layers["attn"]["o_proj"]["bias"] == ("layers", "embed")
  assert layers["attn"]["k_norm"]["scale"] == ("layers", "head_dim")
  assert layers["mlp"]["gate_proj"]["kernel"] == ("layers", "embed", "mlp")
  assert layers["mlp"]["down_proj"]["kernel"] == ("layers", "mlp", "embed")


def test_kv_cache_prefill_and_decode_match_full_forward():
  ref = make_reference(seed=4)
  config, params = ref.config, ref.params
  prompt_len, steps = 7, 4
  total = prompt_len + steps
  ids = _tokens((3, total), seed=4)
  mask = np.concatenate([_left_padded_mask([7, 4, 1], prompt_len),
                         np.ones((3, steps), np.int32)], axis=1)
  positions = np.asarray(qwen3.positions_from_mask(mask))
  full = np.asarray(_logits(config, params, ids, mask))
  # Prefill in two chunks (4 + 3 tokens), then one token per step.
  cache = qwen3.init_cache(config, batch_size=3, max_len=total + 2)
  bounds = [0, 4, prompt_len] + list(range(prompt_len + 1, total + 1))
  for start, stop in zip(bounds[:-1], bounds[1:]):
    step_logits, cache = _cached_step(config, params, ids[:, start:stop],
                                      positions[:, start:stop], mask[:, start:stop], cache)
    assert np.isfinite(np.asarray(step_logits)).all()  # chunks of pure padding included
    real = mask[:, start:stop].astype(bool)
    np.testing.assert_allclose(np.asarray(step_logits)[real], full[:, start:stop][real],
                               rtol=0, atol=ATOL)
    assert int(cache["index"]) == stop
  np.testing.assert_array_equal(np.asarray(cache["mask"])[:, :total], mask.astype(bool))
  assert not np.asarray(cache["mask"])[:, total:].any()


def _loss_logits_grads(config, params, ids, mask):
  """Masked next-token NLL, its logits [B, T-1, V] and its grads."""
  def loss(params):
    out = qwen3.logits(config, params, ids[:, :-1], mask[:, :-1])
    log_probs = jax.nn.log_softmax(out, axis=-1)
    nll = -jnp.take_along_axis(log_probs, ids[:, 1:, None], axis=-1)[..., 0]
    return jnp.sum(nll * mask[:, 1:]) / jnp.sum(mask[:, 1:]), out
  (value, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return value, out, grads


@pytest.fixture(scope="module")
def grad_reference():
  """Plain scanned model, no remat; row 2 is fully padded."""
  ref = make_reference(seed=6)
  ids = _tokens((3, 9), seed=6)
  mask = np.concatenate([_left_padded_mask([9, 5], 9), np.zeros((1, 9), np.int32)])
  return ref, ids, mask, _loss_logits_grads(ref.config, ref.params, ids, mask)


def test_fully_padded_rows_have_finite_logits_and_grads(grad_reference):
  ref, ids, mask, (_, out, grads) = grad_reference
  assert np.isfinite(np.asarray(out)).all()
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  real = mask[:, :-1].astype(bool)
  position_ids = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
  expected = ref.logits(ids[:, :-1], mask[:, :-1], position_ids[:, :-1])
  np.testing.assert_allclose(np.asarray(out)[real], expected[real], rtol=0, atol=ATOL)


@pytest.mark.parametrize("remat,scan_layers", [
    ("none", False), ("full", True), ("dots", True), ("dots_with_no_batch_dims", True)])
def test_remat_and_unrolled_layers_match_plain_scan(grad_reference, remat, scan_layers):
  ref, ids, mask, (loss, out, grads) = grad_reference
  config = ref.config.replace(remat=remat, scan_layers=scan_layers)
  other_loss, other_out, other_grads = _loss_logits_grads(config, ref.params, ids, mask)
  np.testing.assert_allclose(np.asarray(other_out), np.asarray(out), rtol=0, atol=1e-5)
  np.testing.assert_allclose(other_loss, loss, rtol=1e-6)
  jax.tree_util.tree_map_with_path(
      lambda path, a, b: np.testing.assert_allclose(
          np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path)),
      other_grads, grads)
