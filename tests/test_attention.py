"""Every attention implementation against the dense reference (itself checked against
transformers in test_qwen3.py), forward and gradient, on left-padded, packed and cached inputs
with grouped-query heads."""

from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atommem_jax.model import attention
from atommem_jax.model import qwen3
from atommem_jax.model import sharding
from atommem_jax.model.attention import AttentionMask
from atommem_jax.model.config import preset
from _hf_reference import make_reference

ATOL = 2e-5


def _qkv(batch, length, num_keys, num_heads, num_kv_heads, head_dim=16, seed=0,
         dtype=jnp.float32):
  rng = np.random.RandomState(seed)
  q = rng.randn(batch, length, num_heads, head_dim)
  k, v = (rng.randn(batch, num_keys, num_kv_heads, head_dim) for _ in range(2))
  return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def _left_padded(lengths, total):
  return jnp.asarray([[False] * (total - n) + [True] * n for n in lengths])


def _packed(length):
  """Row 0: segments 1, 2, then padding; row 1: segments 1 and 3; row 2: all padding."""
  segments = np.zeros((3, length), np.int32)
  segments[0, :length // 3], segments[0, length // 3:length - 3] = 1, 2
  segments[1, :length // 2], segments[1, length // 2:] = 1, 3
  return jnp.asarray(segments)


def _cached(batch, length, num_keys, index):
  """T new queries at slots index..index+T-1 of an S-slot cache; row 1 left-padded by 3."""
  key_valid = np.zeros((batch, num_keys), bool)
  key_valid[:, :index + length] = True
  key_valid[1:, :3] = False
  return AttentionMask(jnp.arange(length, dtype=jnp.int32) + index, jnp.asarray(key_valid))


CASES = {
    "left_padded": lambda length: AttentionMask.causal(_left_padded([length, length - 9, 0],
                                                                    length)),
    "packed": lambda length: AttentionMask.causal(_packed(length) != 0, _packed(length)),
    "unpadded": lambda length: AttentionMask.causal(jnp.ones((3, length), bool)),
}


def _real_queries(mask: AttentionMask) -> np.ndarray:
  """[B, T] queries that are real tokens: the model uses no other query's output, and
  implementations differ there by design (dense averages a fully masked row, the fused
  kernels zero padding queries or let them see other padding)."""
  return np.asarray(mask.key_valid)[:, np.asarray(mask.query_slots)]


def _weights(mask: AttentionMask, shape, seed=1):
  """Random output cotangents, zero on queries that are not real tokens."""
  real = _real_queries(mask)
  return jnp.asarray(np.random.RandomState(seed).randn(*shape) * real[:, :, None, None],
                     jnp.float32)


def _assert_matches_dense(impl, q, k, v, mask, atol=ATOL):
  """Forward at real queries, and grads of a weighted sum wrt q, k, v."""
  weights = _weights(mask, q.shape)
  seen = _real_queries(mask)
  loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * weights)
  expected = attention.dense_attention(q, k, v, mask)
  got = jax.jit(impl)(q, k, v)
  assert np.isfinite(np.asarray(got, np.float32)).all()
  np.testing.assert_allclose(np.asarray(got, np.float32)[seen],
                             np.asarray(expected, np.float32)[seen], rtol=0, atol=atol)
  grads = jax.jit(jax.grad(loss(impl), argnums=(0, 1, 2)))(q, k, v)
  expected_grads = jax.grad(loss(lambda q, k, v: attention.dense_attention(q, k, v, mask)),
                            argnums=(0, 1, 2))(q, k, v)
  for name, got_grad, want in zip("qkv", grads, expected_grads):
    assert np.isfinite(np.asarray(got_grad, np.float32)).all(), name
    np.testing.assert_allclose(np.asarray(got_grad, np.float32), np.asarray(want, np.float32),
                               rtol=0, atol=atol, err_msg=f"d{name}")


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("heads,blocks", [((4, 2), (8, 16)), ((4, 1), (16, 8)),
                                          ((2, 2), (64, 64))],
                         ids=["gqa2_blocks8x16", "mqa_blocks16x8", "mha_one_block"])
def test_blockwise_matches_dense(case, heads, blocks):
  length = 37  # no block size divides it
  mask = CASES[case](length)
  q, k, v = _qkv(3, length, length, *heads)
  _assert_matches_dense(
      lambda q, k, v: attention.blockwise_attention(q, k, v, mask, *blocks), q, k, v, mask)


def test_blockwise_matches_dense_on_cache_prefill_chunk():
  """A 6-token chunk written at slots 10..15 of a 24-slot cache sees earlier valid slots."""
  mask = _cached(2, 6, 24, index=10)
  q, k, v = _qkv(2, 6, 24, 4, 2)
  _assert_matches_dense(lambda q, k, v: attention.blockwise_attention(q, k, v, mask, 4, 8),
                        q, k, v, mask)


@pytest.mark.parametrize("heads", [(4, 2), (4, 1), (2, 2)], ids=["gqa2", "mqa", "mha"])
def test_decode_matches_dense_on_one_cached_query(heads):
  """One query at slot 10 of a 24-slot cache, rows 1 and 2 left-padded by 3: forward and
  gradients."""
  mask = _cached(3, 1, 24, index=10)
  q, k, v = _qkv(3, 1, 24, *heads)
  _assert_matches_dense(lambda q, k, v: attention.decode_attention(q, k, v, mask), q, k, v,
                        mask)


def test_decode_in_bf16_and_its_errors():
  """bf16 inputs: a bf16 result near fp32 dense attention of the same values (the softmax
  and both reductions run in fp32). More than one query: an error naming the fix."""
  mask = _cached(3, 1, 24, index=10)
  q, k, v = _qkv(3, 1, 24, 4, 2, dtype=jnp.bfloat16)
  out = attention.decode_attention(q, k, v, mask)
  assert out.dtype == jnp.bfloat16
  expected = attention.dense_attention(*(x.astype(jnp.float32) for x in (q, k, v)), mask)
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(expected), rtol=0,
                             atol=2e-2)
  q2, k24, v24 = _qkv(3, 2, 24, 4, 2)
  with pytest.raises(ValueError, match="one query per row.*blockwise_attention"):
    attention.decode_attention(q2, k24, v24, _cached(3, 2, 24, index=10))


def test_blockwise_fully_masked_rows_are_zero_and_gradients_finite():
  mask = AttentionMask.causal(_left_padded([5, 0], 8))
  q, k, v = _qkv(2, 8, 8, 4, 2)
  out = attention.blockwise_attention(q, k, v, mask, 4, 4)
  np.testing.assert_array_equal(np.asarray(out[1]), 0.0)
  grads = jax.grad(lambda *x: jnp.sum(attention.blockwise_attention(*x, mask, 4, 4)),
                   argnums=(0, 1, 2))(q, k, v)
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_blockwise_backward_holds_no_full_score_matrix():
  """No [.., T, S]-sized intermediate in the compiled gradient (memory O(block))."""
  length, block = 256, 32
  mask = AttentionMask.causal(jnp.ones((1, length), bool))
  q, k, v = _qkv(1, length, length, 2, 1)
  grad = jax.jit(jax.grad(lambda *x: jnp.sum(attention.blockwise_attention(*x, mask, block,
                                                                           block)),
                          argnums=(0, 1, 2)))
  hlo = grad.lower(q, k, v).compile().as_text()
  assert f"{length},{length}]" not in hlo.replace(" ", "")
  dense_hlo = jax.jit(jax.grad(lambda *x: jnp.sum(attention.dense_attention(*x, mask)),
                               argnums=(0, 1, 2))).lower(q, k, v).compile().as_text()
  assert f"{length},{length}]" in dense_hlo.replace(" ", "")  # the check can see it


@pytest.mark.parametrize("case", ["left_padded", "packed"])
def test_splash_kernel_in_interpret_mode_matches_dense(case):
  length = 120  # padded to a 128-token block inside
  mask = CASES[case](length)
  q, k, v = _qkv(3, length, length, 4, 2, head_dim=32)
  _assert_matches_dense(
      lambda q, k, v: attention.splash_attention(q, k, v, mask, 128, 128, interpret=True),
      q, k, v, mask)


def test_splash_under_shard_map_matches_dense():
  """Batch over "data", heads over "tensor" (kv heads divide too), on fake CPU devices."""
  mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 2}, jax.devices()[:4])
  mask = jax.tree.map(lambda x: x[:2] if x.ndim == 2 else x, CASES["packed"](128))
  q, k, v = _qkv(2, 128, 128, 4, 2, head_dim=32)
  shard = sharding.ActivationSharding(mesh)
  _assert_matches_dense(
      lambda q, k, v: attention.splash_attention(q, k, v, mask, 128, 128, shard, interpret=True),
      q, k, v, mask)


@pytest.mark.parametrize("rows", [
    [[0] * 3 + [1] * 13, [1] * 16, [1] * 10 + [0] * 6, [0] * 16],  # left, none, right, empty
    [[1] * 4 + [0] * 2 + [1] * 10, [1] * 16, [0] * 16, [0] * 5 + [1] * 11],  # a hole
], ids=["contiguous", "with_hole_falls_back"])
def test_cudnn_argument_mapping_matches_dense_through_xla(rows):
  """The cuDNN call's arguments (roll, lengths, causal), run by implementation="xla"."""
  mask = AttentionMask.causal(jnp.asarray(rows, bool))
  q, k, v = _qkv(4, 16, 16, 4, 2)
  _assert_matches_dense(
      lambda q, k, v: attention.cudnn_attention(q, k, v, mask, implementation="xla",
                                                block_q=8, block_k=8), q, k, v, mask)


def test_cudnn_supported_only_where_cudnn_can_express_the_call():
  q16 = jnp.zeros((1, 8, 4, 64), jnp.bfloat16)
  plain = AttentionMask.causal(jnp.ones((1, 8), bool))
  assert attention.cudnn_supported(q16, plain)
  assert not attention.cudnn_supported(q16.astype(jnp.float32), plain)  # dtype
  assert not attention.cudnn_supported(jnp.zeros((1, 8, 4, 256), jnp.bfloat16), plain)
  assert not attention.cudnn_supported(jnp.zeros((1, 8, 4, 20), jnp.bfloat16), plain)
  packed = AttentionMask.causal(jnp.ones((1, 8), bool), jnp.ones((1, 8), jnp.int32))
  assert not attention.cudnn_supported(q16, packed)
  assert not attention.cudnn_supported(q16, _cached(1, 8, 16, 4))


def _primitives(fn, *args):
  return {eqn.primitive.name for eqn in _all_eqns(jax.make_jaxpr(fn)(*args).jaxpr)}


def _all_eqns(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jax.core.jaxprs_in_params(eqn.params):
      yield from _all_eqns(sub)


def test_dispatch():
  q, k, v = _qkv(3, 37, 37, 4, 2)
  mask = CASES["left_padded"](37)
  run = lambda impl, *x: attention.attention(*x, mask, impl, 8, 8)
  # auto on this CPU host: blockwise; and the right numbers.
  real = _real_queries(mask)
  np.testing.assert_allclose(np.asarray(jax.jit(functools.partial(run, "auto"))(q, k, v))[real],
                             np.asarray(attention.dense_attention(q, k, v, mask))[real],
                             rtol=0, atol=ATOL)
  assert "platform_index" in _primitives(functools.partial(run, "auto"), q, k, v)
  assert "pallas_call" in _primitives(functools.partial(run, "splash"), q, k, v)
  # splash with a cache cannot use the kernel: blockwise (a scan), no pallas_call.
  cached = _cached(2, 6, 24, 10)
  q6, k24, v24 = _qkv(2, 6, 24, 4, 2)
  splash_cached = _primitives(lambda *x: attention.attention(*x, cached, "splash"), q6, k24, v24)
  assert "pallas_call" not in splash_cached and "scan" in splash_cached
  # decode: a fused kernel's choice falls back to dense, blockwise stays blockwise.
  one = AttentionMask(jnp.asarray([9]), jnp.ones((2, 24), bool))
  decode = lambda impl: _primitives(lambda *x: attention.attention(*x, one, impl),
                                    q6[:, :1], k24, v24)
  assert not {"scan", "pallas_call"} & decode("splash")
  assert "scan" in decode("blockwise")
  # auto lowers only this platform's branch: on CPU blockwise (a loop), and for a single
  # query the decode path (neither a loop nor dense's dot).
  lowered = lambda impl, *x: jax.jit(lambda *x: attention.attention(*x, impl)).lower(*x).as_text()
  assert "stablehlo.while" in lowered("auto", q, k, v, mask)
  auto_decode = lowered("auto", q6[:, :1], k24, v24, one)
  assert "stablehlo.while" not in auto_decode and "dot_general" not in auto_decode
  dense_decode = lowered("dense", q6[:, :1], k24, v24, one)
  assert "stablehlo.while" not in dense_decode and "dot_general" in dense_decode
  # ... but over a layer's slice of a stacked cache auto keeps blockwise on CPU.
  stacked = jax.jit(lambda *x: attention.attention(*x, one, stacked_cache=True))
  assert "stablehlo.while" in stacked.lower(q6[:, :1], k24, v24).as_text()
  # auto's CPU branch tiles by at most 64 whatever the config's tiles; blockwise uses them.
  q200, k200, v200 = _qkv(1, 200, 200, 4, 2)
  causal = AttentionMask.causal(jnp.ones((1, 200), bool))
  scans = lambda impl: {eqn.params["length"] for eqn in _all_eqns(jax.make_jaxpr(
      lambda *x: attention.attention(*x, causal, impl, 512, 512))(q200, k200, v200).jaxpr)
                        if eqn.primitive.name == "scan"}
  assert 4 in scans("auto") and scans("blockwise") == {1}  # 200 tokens: 4 tiles of 64
  with pytest.raises(ValueError, match="needs a CUDA GPU"):
    attention.attention(q, k, v, mask, "cudnn")
  with pytest.raises(ValueError, match="expected one of"):
    attention.attention(q, k, v, mask, "flash")


def _largest_array(hlo: str) -> int:
  """Elements of the largest array any instruction of a compiled HLO text produces or reads."""
  shapes = re.findall(r"\b(?:pred|[suf](?:8|16|32|64)|bf16)\[([0-9,]*)\]", hlo)
  return max(math.prod(int(d) for d in s.split(",") if d) for s in shapes)


@functools.cache
def _model_grad_hlo(**overrides) -> str:
  """Compiled HLO of jax.grad of the micro model's forward at T = 1024, blocks of 128."""
  length = 1024
  config = preset("micro", num_hidden_layers=2, attention_block_q=128, attention_block_k=128,
                  **overrides)
  params = jax.eval_shape(lambda key: qwen3.init_params(config, key), jax.random.key(0))

  def loss(params, token_ids):
    hidden, _ = qwen3.forward(config, params, token_ids, jnp.arange(length)[None],
                              hidden_only=True)
    return jnp.sum(hidden)

  tokens = jax.ShapeDtypeStruct((1, length), jnp.int32)
  return jax.jit(jax.grad(loss)).lower(params, tokens).compile().as_text()


@pytest.mark.parametrize("remat,scan_layers", [("none", True), ("full", True), ("none", False)])
def test_blockwise_model_gradient_holds_no_layer_of_scores(remat, scan_layers):
  """jax.grad of the whole model (layers in a differentiated scan, the mask a constant of it)
  has no array as large as one layer's scores [B, K, G, T, S]: the tiles are never stacked."""
  config = preset("micro")
  scores = 1024 * 1024 * config.num_attention_heads  # B = 1, K * G = N
  blockwise = _model_grad_hlo(attention="blockwise", remat=remat, scan_layers=scan_layers)
  assert _largest_array(blockwise) < scores
  assert _largest_array(_model_grad_hlo(attention="dense")) >= scores  # the check can see it


@pytest.mark.parametrize("implementation", ["blockwise", "dense"])
def test_qwen3_forward_matches_transformers(implementation):
  """The whole model with this attention, left-padded rows, against transformers."""
  ref = make_reference(seed=5)
  config = ref.config.replace(attention=implementation, attention_block_q=4,
                              attention_block_k=8)
  ids = np.random.RandomState(5).randint(0, 1000, (3, 11)).astype(np.int32)
  mask = np.array([[1] * 11, [0] * 4 + [1] * 7, [0] * 9 + [1] * 2], np.int32)
  ours = np.asarray(jax.jit(qwen3.logits, static_argnums=0)(config, ref.params, ids, mask))
  theirs = ref.logits(ids, mask, np.maximum(np.cumsum(mask, axis=-1) - 1, 0))
  real = mask.astype(bool)
  np.testing.assert_allclose(ours[real], theirs[real], rtol=0, atol=1e-4)


def test_config_rejects_unknown_attention_and_bad_blocks():
  config = make_reference().config
  with pytest.raises(ValueError, match="attention='flash'; expected one of"):
    config.replace(attention="flash")
  with pytest.raises(ValueError, match="attention_block_k=0"):
    config.replace(attention_block_k=0)


def test_auto_lowers_to_the_splash_kernel_for_a_tpu_slice(monkeypatch):
  """Ahead-of-time compile for a v5p-8 slice from this CPU host: the sharded gradient
  program holds the Mosaic kernel (splash), and compiles (it needs libtpu)."""
  pytest.importorskip("libtpu")
  monkeypatch.setenv("TPU_SKIP_MDS_QUERY", "1")
  monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # other test processes may hold it
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  topology = topologies.get_topology_desc(
      platform="tpu", topology_name="v5p:2x2x1", chip_config_name="megacore",
      chips_per_host_bounds=(2, 2, 1), num_slices=1)
  mesh = jax.sharding.Mesh(np.array(topology.devices).reshape(2, 1, 2),
                           ("data", "fsdp", "tensor"))
  shard = sharding.ActivationSharding(mesh)
  P, NamedSharding = jax.sharding.PartitionSpec, jax.sharding.NamedSharding
  shaped = lambda shape, dtype, spec: jax.ShapeDtypeStruct(shape, dtype,
                                                           sharding=NamedSharding(mesh, spec))

  def loss(q, k, v, segment_ids):
    mask = AttentionMask.causal(segment_ids != 0, segment_ids)
    return jnp.sum(attention.attention(q, k, v, mask, "auto", shard=shard).astype(jnp.float32))

  lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(
      shaped((4, 256, 8, 128), jnp.bfloat16, P("data", None, "tensor")),
      shaped((4, 256, 2, 128), jnp.bfloat16, P("data", None, "tensor")),
      shaped((4, 256, 2, 128), jnp.bfloat16, P("data", None, "tensor")),
      shaped((4, 256), jnp.int32, P("data")))
  assert "tpu_custom_call" in lowered.as_text()
  assert lowered.compile().memory_analysis() is not None
