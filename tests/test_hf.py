"""HF Qwen3 import/export against transformers' own Qwen3ForCausalLM, safetensors and configs."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors
import safetensors.numpy
import torch
import transformers

from atommem_jax.model import hf
from atommem_jax.model import qwen3
from atommem_jax.model import sharding

D, F, L, N, K, H, V = 32, 48, 2, 4, 2, 16, 1000  # head_dim 16 > hidden / heads = 8


def _random_model(tied: bool, seed: int) -> transformers.Qwen3ForCausalLM:
  """A tiny Qwen3 with every parameter random (norms and biases too, so none is trivial)."""
  config = transformers.Qwen3Config(
      vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=L,
      num_attention_heads=N, num_key_value_heads=K, head_dim=H, attention_bias=True,
      tie_word_embeddings=tied, rms_norm_eps=1e-5, max_position_embeddings=512,
      rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
      bos_token_id=1, eos_token_id=2, pad_token_id=0)
  torch.manual_seed(seed)
  model = transformers.Qwen3ForCausalLM(config).eval()
  with torch.no_grad():
    for param in model.parameters():
      param.normal_(0.0, 0.3)
  return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """tied -> (HF model, its save_pretrained directory in fp32 safetensors)."""
  out = {}
  for tied in (False, True):
    model = _random_model(tied, seed=int(tied))
    directory = tmp_path_factory.mktemp(f"tied_{tied}")
    model.save_pretrained(directory)
    out[tied] = model, str(directory)
  return out


def _reference_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
  """transformers' tensors as float32 numpy (a tied lm_head is the embedding: dropped)."""
  state = {name: t.float().numpy() for name, t in model.state_dict().items()}
  if model.config.tie_word_embeddings:
    state.pop("lm_head.weight")
  return state


def _copy(src: str, dst) -> str:
  shutil.copytree(src, dst)
  return str(dst)


def _edit_json(path: str, **changes) -> None:
  with open(path) as f:
    data = json.load(f)
  for key, value in changes.items():
    if value is None:
      data.pop(key, None)
    else:
      data[key] = value
  with open(path, "w") as f:
    json.dump(data, f)


def _assert_same_model(ref: torch.nn.Module, other: torch.nn.Module) -> None:
  ref_state, other_state = ref.state_dict(), other.state_dict()
  assert ref_state.keys() == other_state.keys()
  for name, tensor in ref_state.items():
    assert other_state[name].dtype == tensor.dtype, name
    assert torch.equal(other_state[name], tensor), name


def _from_pretrained(directory) -> torch.nn.Module:
  model, info = transformers.AutoModelForCausalLM.from_pretrained(
      directory, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert not info["mismatched_keys"] and not info["error_msgs"], info
  return model


@pytest.mark.parametrize("tied", [False, True])
def test_fp32_round_trip_through_transformers_is_exact(checkpoints, tmp_path, tied):
  model, src = checkpoints[tied]
  config, params = hf.load_hf(src)
  assert config.tie_word_embeddings == tied and config.attention_bias
  assert config.head_dim == H and config.rope_theta == 5000.0 and config.rms_norm_eps == 1e-5
  assert config.param_dtype == "float32"
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {np.dtype(jnp.float32)}
  assert ("lm_head" in params) == (not tied)
  hf.save_hf(config, params, str(tmp_path))
  with safetensors.safe_open(tmp_path / "model.safetensors", "np") as f:
    assert ("lm_head.weight" in f.keys()) == (not tied)
  _assert_same_model(model, _from_pretrained(tmp_path))
  generation = transformers.GenerationConfig.from_pretrained(tmp_path)
  assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (1, 2, 0)


def test_bf16_round_trip_is_exact(tmp_path):
  model = _random_model(tied=False, seed=2).to(torch.bfloat16)
  model.save_pretrained(tmp_path / "bf16")
  config, params = hf.load_hf(str(tmp_path / "bf16"), dtype=jnp.bfloat16)
  assert config.param_dtype == "bfloat16"
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {np.dtype(jnp.bfloat16)}
  hf.save_hf(config, params, str(tmp_path / "out"))
  with safetensors.safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
    assert f.get_tensor("model.norm.weight").dtype == torch.bfloat16
  with open(tmp_path / "out" / "config.json") as f:
    assert json.load(f)["dtype"] == "bfloat16"
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "out", dtype=torch.bfloat16)
  _assert_same_model(model, reloaded)


@pytest.mark.parametrize("stored, loaded", [(torch.float32, jnp.bfloat16),
                                            (torch.float16, jnp.float32)])
def test_stored_dtype_is_converted_to_the_requested_one(tmp_path, stored, loaded):
  model = _random_model(tied=False, seed=3).to(stored)
  model.save_pretrained(tmp_path)
  _, params = hf.load_hf(str(tmp_path), dtype=loaded)
  embedding = params["embedder"]["embedding"]
  assert embedding.dtype == loaded
  expected = model.model.embed_tokens.weight.detach().to(torch.bfloat16 if loaded == jnp.bfloat16
                                                         else torch.float32)
  np.testing.assert_array_equal(np.asarray(embedding, np.float32), expected.float().numpy())


def test_loaded_params_compute_what_transformers_modules_compute(checkpoints):
  model, src = checkpoints[False]
  _, params = hf.load_hf(src)
  p = jax.tree.map(np.asarray, params)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, D)).astype(np.float32)
  tol = dict(rtol=1e-5, atol=1e-5)
  with torch.no_grad():
    for i, layer in enumerate(model.model.layers):
      attn = p["layers"]["attn"]
      for name, heads in (("q_proj", N), ("k_proj", K), ("v_proj", K)):
        ref = getattr(layer.self_attn, name)(torch.from_numpy(x)).numpy().reshape(3, heads, H)
        ours = np.einsum("BD,DNH->BNH", x, attn[name]["kernel"][i]) + attn[name]["bias"][i]
        np.testing.assert_allclose(ours, ref, **tol)
      y = rng.normal(size=(3, N, H)).astype(np.float32)
      ref = layer.self_attn.o_proj(torch.from_numpy(y.reshape(3, N * H))).numpy()
      ours = np.einsum("BNH,NHD->BD", y, attn["o_proj"]["kernel"][i]) + attn["o_proj"]["bias"][i]
      np.testing.assert_allclose(ours, ref, **tol)
      mlp = p["layers"]["mlp"]
      for name in ("gate_proj", "up_proj"):
        ref = getattr(layer.mlp, name)(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(x @ mlp[name]["kernel"][i], ref, **tol)
      z = rng.normal(size=(3, F)).astype(np.float32)
      ref = layer.mlp.down_proj(torch.from_numpy(z)).numpy()
      np.testing.assert_allclose(z @ mlp["down_proj"]["kernel"][i], ref, **tol)
      for ours, theirs in ((attn["q_norm"], layer.self_attn.q_norm),
                           (attn["k_norm"], layer.self_attn.k_norm),
                           (p["layers"]["input_norm"], layer.input_layernorm),
                           (p["layers"]["post_attn_norm"], layer.post_attention_layernorm)):
        np.testing.assert_array_equal(ours["scale"][i], theirs.weight.numpy())
    np.testing.assert_array_equal(p["final_norm"]["scale"], model.model.norm.weight.numpy())
    ids = np.array([0, 5, 999])
    np.testing.assert_array_equal(p["embedder"]["embedding"][ids],
                                  model.model.embed_tokens(torch.from_numpy(ids)).numpy())
    np.testing.assert_allclose(x @ p["lm_head"]["kernel"],
                               model.lm_head(torch.from_numpy(x)).numpy(), **tol)


@pytest.mark.parametrize("tied", [False, True])
def test_pure_conversions_invert_each_other(checkpoints, tied):
  model, src = checkpoints[tied]
  config, _ = hf.load_hf(src)
  state = safetensors.numpy.load_file(os.path.join(src, "model.safetensors"))
  params = hf.hf_state_dict_to_params(config, state)
  assert params["layers"]["attn"]["q_proj"]["kernel"].shape == (L, D, N, H)
  assert params["layers"]["attn"]["o_proj"]["kernel"].shape == (L, N, H, D)
  back = hf.params_to_hf_state_dict(config, params)
  reference = _reference_state(model)
  assert list(back) == list(reference)  # transformers' order
  for name, tensor in reference.items():
    np.testing.assert_array_equal(back[name], tensor, err_msg=name)


def test_sharded_import_matches(checkpoints, tmp_path):
  model, _ = checkpoints[False]
  model.save_pretrained(tmp_path, max_shard_size="100KB")
  with open(tmp_path / "model.safetensors.index.json") as f:
    assert len(set(json.load(f)["weight_map"].values())) > 1
  assert not (tmp_path / "model.safetensors").exists()
  config, params = hf.load_hf(str(tmp_path))
  state = hf.params_to_hf_state_dict(config, jax.tree.map(np.asarray, params))
  for name, tensor in _reference_state(model).items():
    np.testing.assert_array_equal(state[name], tensor, err_msg=name)


def test_sharded_export_loads_in_transformers_and_stale_files_go(checkpoints, tmp_path):
  model, src = checkpoints[True]
  config, params = hf.load_hf(src)
  hf.save_hf(config, params, str(tmp_path), max_shard_bytes=60_000)
  shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
  assert len(shards) >= 3 and all(re.fullmatch(rf"model-\d{{5}}-of-{len(shards):05d}\.safetensors",
                                                name) for name in shards)
  with open(tmp_path / "model.safetensors.index.json") as f:
    index = json.load(f)
  assert set(index["weight_map"].values()) == set(shards)
  assert index["metadata"]["total_size"] == sum(
      t.numel() * 4 for name, t in model.state_dict().items() if name != "lm_head.weight")
  _assert_same_model(model, _from_pretrained(tmp_path))
  hf.save_hf(config, params, str(tmp_path))  # unsharded over the sharded export
  assert sorted(p.name for p in tmp_path.glob("model*")) == ["model.safetensors"]
  _assert_same_model(model, _from_pretrained(tmp_path))


def test_transformers4_config_with_top_level_rope_theta(checkpoints, tmp_path):
  src = _copy(checkpoints[False][1], tmp_path / "ckpt")
  _edit_json(os.path.join(src, "config.json"), rope_parameters=None, rope_theta=123456.0,
             transformers_version="4.51.0")
  config, _ = hf.load_hf(src)
  assert config.rope_theta == 123456.0
  assert transformers.AutoConfig.from_pretrained(src).rope_parameters["rope_theta"] == 123456.0


def test_tokenizer_files_are_copied(checkpoints, tmp_path):
  from atommem_jax.data import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  config, params = hf.load_hf(checkpoints[True][1])
  hf.save_hf(config, params, str(tmp_path), tokenizer_dir=tok_lib.qwen3_tokenizer_dir())
  for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
    assert (tmp_path / name).is_file()
  text = "Memory 1: Paris is in France."
  assert (transformers.AutoTokenizer.from_pretrained(tmp_path).encode(text)
          == tok_lib.load_tokenizer().encode(text))
  with pytest.raises(FileNotFoundError, match="no tokenizer files found"):
    hf.save_hf(config, params, str(tmp_path / "x"), tokenizer_dir=str(tmp_path / "nowhere"))


def test_missing_directory_and_config(checkpoints, tmp_path):
  with pytest.raises(FileNotFoundError, match=r"nope: not a directory"):
    hf.load_hf(str(tmp_path / "nope"))
  src = _copy(checkpoints[False][1], tmp_path / "ckpt")
  os.remove(os.path.join(src, "config.json"))
  with pytest.raises(FileNotFoundError, match=re.escape(os.path.join(src, "config.json"))):
    hf.load_hf(src)


def test_missing_weights_never_unpickles(checkpoints, tmp_path):
  src = _copy(checkpoints[False][1], tmp_path / "ckpt")
  os.remove(os.path.join(src, "model.safetensors"))
  with open(os.path.join(src, "pytorch_model.bin"), "wb") as f:
    f.write(b"not a pickle")  # would raise an unpickling error if anything read it
  with pytest.raises(FileNotFoundError,
                     match=r"model.safetensors.index.json exists.*pytorch_model\.bin.*never"):
    hf.load_hf(src)


def test_index_pointing_to_missing_shard(checkpoints, tmp_path):
  checkpoints[False][0].save_pretrained(tmp_path, max_shard_size="100KB")
  with open(tmp_path / "model.safetensors.index.json") as f:
    shard = sorted(set(json.load(f)["weight_map"].values()))[1]
  os.remove(tmp_path / shard)
  with pytest.raises(FileNotFoundError,
                     match=rf"model\.safetensors\.index\.json: shard '{shard}'.*not a file"):
    hf.load_hf(str(tmp_path))


@pytest.mark.parametrize("model_type, arch", [("llama", "LlamaForCausalLM"),
                                              ("qwen3_moe", "Qwen3MoeForCausalLM")])
def test_other_architectures_are_refused(checkpoints, tmp_path, model_type, arch):
  src = _copy(checkpoints[False][1], tmp_path / "ckpt")
  _edit_json(os.path.join(src, "config.json"), model_type=model_type, architectures=[arch])
  with pytest.raises(ValueError, match=rf"config\.json: model_type='{model_type}'.*{arch}"):
    hf.load_hf(src)


def test_unsupported_activation_is_refused(checkpoints, tmp_path):
  src = _copy(checkpoints[False][1], tmp_path / "ckpt")
  _edit_json(os.path.join(src, "config.json"), hidden_act="gelu")
  with pytest.raises(ValueError, match=r"config\.json: hidden_act='gelu'"):
    hf.load_hf(src)


def test_shape_mismatch_names_tensor_and_shapes(checkpoints, tmp_path):
  src = _copy(checkpoints[False][1], tmp_path / "ckpt")
  _edit_json(os.path.join(src, "config.json"), intermediate_size=64)
  pattern = (r"model\.layers\.0\.mlp\.gate_proj\.weight in .*model\.safetensors: "
             r"expected \(64, 32\), found \(48, 32\)")
  with pytest.raises(ValueError, match=pattern):
    hf.load_hf(src)


def _rewrite(src: str, drop=(), add=None) -> None:
  """Rewrites model.safetensors with the reference writer, dropping or adding tensors."""
  path = os.path.join(src, "model.safetensors")
  state = safetensors.numpy.load_file(path)
  for name in drop:
    del state[name]
  state.update(add or {})
  safetensors.numpy.save_file(state, path, metadata={"format": "pt"})


def test_missing_and_unexpected_tensors_are_listed(checkpoints, tmp_path):
  src = _copy(checkpoints[False][1], tmp_path / "missing")
  _rewrite(src, drop=["model.layers.1.self_attn.k_norm.weight", "lm_head.weight"])
  with pytest.raises(ValueError, match=r"missing tensors \(2\).*"
                     r"model\.layers\.1\.self_attn\.k_norm\.weight, lm_head\.weight"):
    hf.load_hf(src)
  src = _copy(checkpoints[False][1], tmp_path / "unexpected")
  extra = np.zeros((4,), np.float32)
  _rewrite(src, add={"model.layers.0.self_attn.extra.weight": extra,
                     "model.layers.0.self_attn.rotary_emb.inv_freq": extra})
  with pytest.raises(ValueError, match=r"unexpected tensors \(1\): "
                     r"model\.layers\.0\.self_attn\.extra\.weight in .*model\.safetensors$"):
    hf.load_hf(src)


def test_harmless_extras_are_ignored(checkpoints, tmp_path):
  model, _ = checkpoints[True]
  src = _copy(checkpoints[True][1], tmp_path / "ckpt")
  embedding = model.model.embed_tokens.weight.detach().numpy()
  _rewrite(src, add={"lm_head.weight": embedding,  # a tied head saved anyway
                     "model.rotary_emb.inv_freq": np.ones((H // 2,), np.float32)})
  _, params = hf.load_hf(src)
  np.testing.assert_array_equal(params["embedder"]["embedding"], embedding)


def test_unsupported_dtype_and_truncated_file(checkpoints, tmp_path):
  src = _copy(checkpoints[False][1], tmp_path / "int")
  _rewrite(src, add={"model.norm.weight": np.ones((D,), np.int32)})
  with pytest.raises(ValueError, match=r"model\.safetensors: tensor model\.norm\.weight has "
                     r"dtype I32"):
    hf.load_hf(src)
  src = _copy(checkpoints[False][1], tmp_path / "cut")
  path = os.path.join(src, "model.safetensors")
  os.truncate(path, os.path.getsize(path) - 100)
  with pytest.raises(ValueError, match=r"model\.safetensors: tensor .* truncated"):
    hf.load_hf(src)


def test_save_refuses_params_that_do_not_match_the_config(checkpoints, tmp_path):
  config, params = hf.load_hf(checkpoints[False][1])
  del params["layers"]["attn"]["q_norm"]
  with pytest.raises(ValueError, match=r"missing leaf layers/attn/q_norm/scale of shape \(2, 16\)"):
    hf.save_hf(config, params, str(tmp_path))
  with pytest.raises(ValueError, match=r"unexpected leaf lm_head/kernel"):
    hf.save_hf(config.replace(tie_word_embeddings=True), hf.load_hf(checkpoints[False][1])[1],
               str(tmp_path))
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize("tied", [False, True])
def test_logits_match_transformers(checkpoints, tied):
  model, src = checkpoints[tied]
  config, params = hf.load_hf(src)
  ids = np.random.default_rng(1).integers(0, V, size=(2, 11))
  ours = np.asarray(qwen3.logits(config, params, jnp.asarray(ids)))
  with torch.no_grad():
    reference = model(torch.from_numpy(ids)).logits.numpy()
  assert ours.shape == reference.shape
  assert np.abs(ours - reference).max() <= 1e-4


def test_mesh_load_places_each_shard_from_the_checkpoint(checkpoints):
  assert len(jax.devices()) == 8
  mesh = sharding.make_mesh((2, 2, 2))
  config, params = hf.load_hf(checkpoints[False][1], mesh=mesh)
  _, unsharded = hf.load_hf(checkpoints[False][1])
  expected = qwen3.param_shardings(config, mesh)
  flat_expected = jax.tree.leaves(expected, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  for leaf, want, ref in zip(jax.tree.leaves(params), flat_expected, jax.tree.leaves(unsharded)):
    assert leaf.sharding == want
    ref = np.asarray(ref)
    for shard in leaf.addressable_shards:
      np.testing.assert_array_equal(np.asarray(shard.data), ref[shard.index])
  kernel = params["layers"]["mlp"]["gate_proj"]["kernel"]  # [L, D, F]: D on fsdp, F on tensor
  assert kernel.addressable_shards[0].data.shape == (L, D // 2, F // 2)


_MULTIHOST_WORKER = """
import sys
process_id, port, src, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
from atommem_jax.model import hf, sharding
config, params = hf.load_hf(src, mesh=sharding.make_mesh((2, 2, 2)))
assert not params["layers"]["mlp"]["gate_proj"]["kernel"].is_fully_addressable
hf.save_hf(config, params, out, max_shard_bytes=60_000)
"""


@pytest.mark.multiprocess
def test_two_process_load_and_save_round_trip(checkpoints, tmp_path):
  model, src = checkpoints[False]
  script = tmp_path / "worker.py"
  script.write_text(_MULTIHOST_WORKER)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  workers = [subprocess.Popen([sys.executable, str(script), str(i), str(port), src,
                               str(tmp_path / "out")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [w.communicate(timeout=120)[0] for w in workers]
  assert [w.returncode for w in workers] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  _assert_same_model(model, _from_pretrained(tmp_path / "out"))


# --- a URL as the directory (a gs:// workdir; here fsspec's memory://) -----------------------


def test_remote_directories_load_and_export_like_local_ones(checkpoints, tmp_path):
  import fsspec  # pylint: disable=g-import-not-at-top
  fs = fsspec.filesystem("memory")
  model, local = checkpoints[False]
  fs.put(local, "/hf_in", recursive=True)  # uploaded by fsspec itself, not by our code
  config, params = hf.load_hf("memory://hf_in")
  local_config, local_params = hf.load_hf(local)
  assert config == local_config
  jax.tree.map(np.testing.assert_array_equal, params, local_params)

  fs.pipe_file("/hf_out/model.safetensors", b"stale weights of an earlier export")
  hf.save_hf(config, params, "memory://hf_out", max_shard_bytes=40_000)
  names = sorted(name.rsplit("/", 1)[1] for name in fs.ls("/hf_out", detail=False))
  assert "model.safetensors" not in names and "model.safetensors.index.json" in names
  assert sum(name.startswith("model-0") for name in names) > 1, names
  fs.get("/hf_out", str(tmp_path / "hf_out"), recursive=True)
  _assert_same_model(model, _from_pretrained(tmp_path / "hf_out"))


# --- config.json fields of the wrong type or range (each once loaded silently or crashed) ---


@pytest.mark.parametrize("changes, field", [
    ({"hidden_size": "64"}, "hidden_size"),  # was a TypeError naming nothing
    ({"num_attention_heads": 0}, "num_attention_heads"),  # was a ZeroDivisionError
    ({"rope_parameters": "default"}, "rope_parameters"),  # was an AttributeError
    ({"eos_token_id": []}, "eos_token_id"),  # was an IndexError
    ({"tie_word_embeddings": "false"}, "tie_word_embeddings"),  # loaded as tied
    ({"num_key_value_heads": 3}, "num_key_value_heads"),  # 4 heads: was an error naming no file
    ({"rms_norm_eps": -1e-6}, "rms_norm_eps"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": "5000"}},
     "rope_parameters.rope_theta"),
    ({"vocab_size": 1000.0}, "vocab_size"),
    ({"attention_bias": 1}, "attention_bias"),
    ({"bos_token_id": -1}, "bos_token_id"),
    ({"max_position_embeddings": None}, "max_position_embeddings"),  # was a TypeError
])
def test_bad_config_json_fields_are_named_with_the_file(checkpoints, tmp_path, changes, field):
  src = _copy(checkpoints[False][1], tmp_path / "ckpt")
  _set_json(os.path.join(src, "config.json"), **changes)
  with pytest.raises(ValueError) as error:
    hf.load_hf(src)
  message = str(error.value)
  assert message.startswith(os.path.join(src, "config.json") + ": field " + field + "="), message
  assert "\n" not in message


def _set_json(path: str, **changes) -> None:
  """Sets fields of a JSON file (None writes null)."""
  with open(path) as f:
    data = json.load(f)
  data.update(changes)
  with open(path, "w") as f:
    json.dump(data, f)


def test_config_json_eos_list_and_nulls_load(checkpoints, tmp_path):
  """What transformers itself writes still loads: an eos list, null optional fields."""
  src = _copy(checkpoints[False][1], tmp_path / "ckpt")
  _set_json(os.path.join(src, "config.json"), eos_token_id=[2, 1], rope_scaling=None,
            pad_token_id=None, rope_theta=None)
  config, _ = hf.load_hf(src)
  assert config.eos_token_id == 2 and config.pad_token_id is None and config.head_dim == H
  assert config.rope_theta == 5000.0  # from rope_parameters
