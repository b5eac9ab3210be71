"""Mesh construction, logical-axis shardings and the sharded forward on 8 fake CPU devices.

Needs XLA_FLAGS=--xla_force_host_platform_device_count=8 before jax is imported (conftest).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from atommem_jax.model import qwen3
from atommem_jax.model import sharding
from atommem_jax.model.config import Qwen3Config

MESH_SHAPES = [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)]

# Every sharded dimension divides every mesh above.
DIVISIBLE = Qwen3Config(vocab_size=1024, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=8,
                        head_dim=16, tie_word_embeddings=True)
# 2 kv heads and vocab 1002 do not divide tensor=4 (or 8): those dimensions replicate.
INDIVISIBLE = Qwen3Config(vocab_size=1002, hidden_size=64, intermediate_size=96,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          head_dim=16, attention_bias=True)


@pytest.fixture(autouse=True)
def eight_devices():
  assert len(jax.devices()) == 8, (
      "tests/test_sharding.py needs 8 devices: set "
      "XLA_FLAGS=--xla_force_host_platform_device_count=8 before jax is imported")


def _batch(seed=0, vocab=1000):
  rng = np.random.RandomState(seed)
  ids = rng.randint(0, vocab, (8, 12)).astype(np.int32)
  mask = np.ones((8, 12), np.int32)
  for row, pad in enumerate([0, 3, 5, 1, 0, 11, 2, 7]):
    mask[row, :pad] = 0
  segment_ids = np.where(np.arange(12) < 8, 1, 2)[None].repeat(8, 0).astype(np.int32)
  segment_ids[0] = 1  # one row unpacked
  segment_ids = segment_ids * mask
  positions = np.zeros_like(ids)
  for row in range(8):
    for seg in (1, 2):
      where = segment_ids[row] == seg
      positions[row, where] = np.arange(where.sum())
  return ids, positions, mask, segment_ids


@functools.partial(jax.jit, static_argnums=0)
def _single_device_forward(config, params, ids, positions, mask, segment_ids):
  return qwen3.forward(config, params, ids, positions, attention_mask=mask,
                       segment_ids=segment_ids)[0]


@pytest.fixture(scope="module", params=[DIVISIBLE, INDIVISIBLE], ids=["divisible", "indivisible"])
def reference(request):
  config = request.param
  shapes = jax.eval_shape(functools.partial(qwen3.init_params, config), jax.random.key(0))
  rng = np.random.RandomState(0)
  params = jax.tree.map(lambda x: rng.normal(0, 0.3, x.shape).astype(np.float32), shapes)
  batch = _batch(vocab=config.vocab_size)
  return config, params, batch, np.asarray(_single_device_forward(config, params, *batch))


@pytest.mark.parametrize("shape", MESH_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_sharded_forward_matches_single_device(reference, shape):
  config, params, batch, expected = reference
  mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape)))
  sharded_params = jax.device_put(params, qwen3.param_shardings(config, mesh))
  out = qwen3.sharded_forward_fn(config, mesh)(sharded_params, *batch)
  real = batch[3] != 0
  np.testing.assert_allclose(np.asarray(out)[real], expected[real], rtol=0, atol=1e-5)
  assert np.isfinite(np.asarray(out)).all()
  vocab_axis = "tensor" if config.vocab_size % shape[2] == 0 else None
  assert out.sharding.spec == P(("data", "fsdp"), None, vocab_axis)
  assert out.addressable_shards[0].data.shape == (
      8 // (shape[0] * shape[1]), 12, config.vocab_size // (shape[2] if vocab_axis else 1))


def test_sharded_forward_without_optional_inputs_matches_logits():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  shapes = jax.eval_shape(functools.partial(qwen3.init_params, DIVISIBLE), jax.random.key(0))
  rng = np.random.RandomState(1)
  params = jax.tree.map(lambda x: rng.normal(0, 0.3, x.shape).astype(np.float32), shapes)
  ids = rng.randint(0, DIVISIBLE.vocab_size, (4, 6)).astype(np.int32)
  positions = np.broadcast_to(np.arange(6, dtype=np.int32), ids.shape)
  out = qwen3.sharded_forward_fn(DIVISIBLE, mesh)(
      jax.device_put(params, qwen3.param_shardings(DIVISIBLE, mesh)), ids, positions)
  expected = jax.jit(qwen3.logits, static_argnums=0)(DIVISIBLE, params, ids)
  np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=0, atol=1e-5)


def test_init_params_on_mesh_shards_each_parameter():
  mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
  params = qwen3.init_params(INDIVISIBLE, jax.random.key(0), mesh)
  layers = params["layers"]
  # (param, expected spec, expected shard shape); L=2 D=64 N=4 K=2 H=16 F=96 V=1002.
  expected = [
      (params["embedder"]["embedding"], P(None, "fsdp"), (1002, 32)),
      (params["lm_head"]["kernel"], P("fsdp", None), (32, 1002)),
      (params["final_norm"]["scale"], P(None), (64,)),
      (layers["input_norm"]["scale"], P(None, None), (2, 64)),
      (layers["attn"]["q_proj"]["kernel"], P(None, "fsdp", "tensor", None), (2, 32, 1, 16)),
      (layers["attn"]["q_proj"]["bias"], P(None, "tensor", None), (2, 1, 16)),
      (layers["attn"]["k_proj"]["kernel"], P(None, "fsdp", None, None), (2, 32, 2, 16)),
      (layers["attn"]["v_proj"]["bias"], P(None, None, None), (2, 2, 16)),
      (layers["attn"]["o_proj"]["kernel"], P(None, "tensor", None, "fsdp"), (2, 1, 16, 32)),
      (layers["attn"]["o_proj"]["bias"], P(None, "fsdp"), (2, 32)),
      (layers["attn"]["q_norm"]["scale"], P(None, None), (2, 16)),
      (layers["mlp"]["gate_proj"]["kernel"], P(None, "fsdp", "tensor"), (2, 32, 24)),
      (layers["mlp"]["down_proj"]["kernel"], P(None, "tensor", "fsdp"), (2, 24, 32)),
  ]
  for param, spec, shard_shape in expected:
    assert param.sharding.mesh == mesh
    assert param.sharding.spec == spec
    assert {s.data.shape for s in param.addressable_shards} == {shard_shape}
  assert len(jax.tree.leaves(params)) == 18
  assert all(len(p.addressable_shards) == 8 for p in jax.tree.leaves(params))


def test_make_mesh_fills_minus_one_and_keeps_axis_order():
  mesh = sharding.make_mesh({"data": -1, "fsdp": 2, "tensor": 2})
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert dict(sharding.make_mesh([1, -1, 2]).shape) == {"data": 1, "fsdp": 4, "tensor": 2}
  assert dict(sharding.make_mesh([("tensor", 8)]).shape) == {"tensor": 8}
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())


@pytest.mark.parametrize("sizes,message", [
    ({"data": 3, "fsdp": 1, "tensor": 2}, "multiply to 6 but there are 8 devices"),
    ({"data": -1, "tensor": 3}, "does not divide the 8 devices"),
    ({"data": -1, "tensor": -1}, "at most one -1"),
    ({"data": 0, "tensor": 8}, "sizes must be >= 1"),
    ([2, 4], "one size for each of"),
])
def test_make_mesh_rejects_bad_sizes(sizes, message):
  with pytest.raises(ValueError, match=message):
    sharding.make_mesh(sizes)


def test_logical_to_spec_replicates_indivisible_dims_and_rejects_unknown_names():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = sharding.DEFAULT_RULES
  assert sharding.logical_to_spec(("act_batch", "act_vocab"), mesh, rules, (8, 6)) == P(
      ("data", "fsdp"), "tensor")
  # Batch 2 takes only "data"; vocab 5 is replicated.
  assert sharding.logical_to_spec(("act_batch", "act_vocab"), mesh, rules, (2, 5)) == P(
      "data", None)
  # A mesh axis is used once per array; axes absent from the mesh are skipped.
  assert sharding.logical_to_spec(("mlp", "vocab"), mesh, rules, (4, 4)) == P("tensor", None)
  small = sharding.make_mesh({"tensor": 8})
  assert sharding.logical_to_spec(("act_batch", "mlp"), small, rules, (8, 8)) == P(None, "tensor")
  with pytest.raises(ValueError, match="'emb' has no sharding rule"):
    sharding.logical_to_spec(("emb",), mesh, rules)


def test_activation_sharding_is_identity_without_mesh():
  x = jnp.arange(6.0).reshape(2, 3)
  assert sharding.ActivationSharding()(x, ("act_batch", "act_embed")) is x
