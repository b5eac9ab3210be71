"""The paper's run as shipped: it starts from model.hf_dir's weights, and its configs train.

Reference: transformers' Qwen3ForCausalLM on a tiny random checkpoint with the real 151,936
vocabulary (so the real Qwen3 tokenizer fits), saved with save_pretrained; the policy the
train job starts from gives its logits, on one device and on an 8-device fsdp mesh. The
schedule reference is transformers' own linear schedule (TRL's default, the official SFT's).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from atommem_jax import config_lib
from atommem_jax.data import multihop
from atommem_jax.data import synthetic
from atommem_jax.data import tokenizer as tokenizer_lib
from atommem_jax.model import hf
from atommem_jax.model import qwen3
from atommem_jax.train import contexts as contexts_lib
from atommem_jax.train import loop
from atommem_jax.train import setup
from atommem_jax.train import stages
from atommem_jax.train import state as state_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V, D, F, L, N, K, H = 151_936, 32, 48, 2, 4, 2, 16


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """(HF model, its save_pretrained directory): untied, every weight random at unit scale."""
  config = transformers.Qwen3Config(
      vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=L,
      num_attention_heads=N, num_key_value_heads=K, head_dim=H, tie_word_embeddings=False,
      rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
      bos_token_id=151_643, eos_token_id=151_645)
  torch.manual_seed(0)
  model = transformers.Qwen3ForCausalLM(config).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      scale = 1.0 if "embed" in name or "norm" in name else param.shape[-1] ** -0.5
      param.normal_(1.0 if "norm" in name else 0.0, 0.3 if "norm" in name else scale)
  directory = tmp_path_factory.mktemp("hf")
  model.save_pretrained(directory)
  return model, str(directory)


def _config(hf_dir: str, **changes) -> config_lib.ConfigDict:
  """The paper config with the checkpoint and fp32 compute (for a tight logit comparison)."""
  c = config_lib.load_config_file("qwen3_8b_a800")
  c.model.update(hf_dir=hf_dir, dtype="float32", rollout_dtype="float32")
  c.embedder = "hashing:64"
  c.data.update(train_files=(), eval_files=())
  for key, value in changes.items():
    section, field = key.split("__")
    c[section][field] = value
  return c


def _reference_logits(model, ids: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(ids)).logits.numpy()


@pytest.mark.parametrize("devices", [1, 8])
def test_the_policy_at_step_0_is_the_checkpoint(checkpoint, tmp_path, devices):
  """The SFT stage's state before its first step computes transformers' logits, laid out on
  the job's mesh (1 device; fsdp over 8) in model.param_dtype."""
  model, hf_dir = checkpoint
  job = setup.prepare(_config(hf_dir), str(tmp_path / "run"))
  if devices == 1:
    job = dataclasses.replace(job, mesh=state_lib.single_device_mesh())
  assert dict(job.mesh.shape)["fsdp"] == devices
  job = setup.with_steps(job, sft=0, grpo=0)
  initial = setup.initial_params(job, jax.random.key(0))
  params = stages.run_sft(job, initial, [], 0, evaluate=None)  # 0 steps: the starting state
  job.writer.close()
  expected = qwen3.param_shardings(job.model_config, job.mesh)
  for leaf, sharding in zip(jax.tree.leaves(params), jax.tree.leaves(
      expected, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))):
    assert leaf.dtype == jnp.float32 and leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
  ids = np.random.default_rng(0).integers(0, V, size=(2, 9))
  ours = np.asarray(qwen3.logits(job.model_config, params, jnp.asarray(ids)))
  assert np.abs(ours - _reference_logits(model, ids)).max() <= 1e-4


def test_each_device_reads_only_its_slice_in_the_param_dtype(checkpoint, tmp_path, monkeypatch):
  """On an 8-way fsdp mesh no read of the checkpoint is larger than one device's shard, and
  reads come back in model.param_dtype (bf16 here), never as a whole fp32 copy."""
  _, hf_dir = checkpoint
  config = _config(hf_dir)
  config.model.param_dtype = "bfloat16"
  job = setup.prepare(config, str(tmp_path / "run"))
  reads = []
  read = hf._Source.read  # pylint: disable=protected-access

  def recording_read(source, index, dtype):
    out = read(source, index, dtype)
    reads.append((source.entry.hf_name, out.size, out.dtype))
    return out

  monkeypatch.setattr(hf._Source, "read", recording_read)  # pylint: disable=protected-access
  params = setup.initial_params(job, jax.random.key(0))
  job.writer.close()
  assert {dtype for _, _, dtype in reads} == {np.dtype(jnp.bfloat16)}
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {np.dtype(jnp.bfloat16)}
  embedding = [size for name, size, _ in reads if name == "model.embed_tokens.weight"]
  assert len(embedding) == 8 and max(embedding) == V * D // 8  # [V, D]: D over fsdp=8
  for leaf in jax.tree.leaves(params):
    shard = int(np.prod(leaf.sharding.shard_shape(leaf.shape)))
    assert all(s.data.size == shard for s in leaf.addressable_shards)


def _env() -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false",
             XLA_FLAGS="--xla_force_host_platform_device_count=8 "
                       "--xla_backend_optimization_level=0",
             HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _train(workdir: str, *flags: str) -> subprocess.CompletedProcess:
  command = [sys.executable, "-m", "atommem_jax.train", "--config",
             os.path.join(REPO, "configs", "qwen3_8b_a800.py"), "--workdir", workdir, *flags]
  return subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True,
                        timeout=300)


_CLI_FLAGS = ("--config.sft.steps=0", "--config.grpo.steps=0", "--config.embedder=hashing:64",
              "--config.data.train_files=()", "--config.data.eval_files=()")


@pytest.mark.slow
def test_the_cli_job_starts_from_the_checkpoint(checkpoint, tmp_path):
  """No training steps: the job's exported policy is the checkpoint, tensor for tensor."""
  model, hf_dir = checkpoint
  result = _train(str(tmp_path / "run"), *_CLI_FLAGS, f"--config.model.hf_dir={hf_dir}")
  assert result.returncode == 0, result.stderr[-3000:]
  exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "hf")
  for (name, want), (_, got) in zip(model.state_dict().items(),
                                    exported.state_dict().items()):
    assert torch.equal(want, got), name


def test_the_cli_job_stops_on_a_truncated_checkpoint_naming_the_file(checkpoint, tmp_path):
  """model.safetensors cut in half: a non-zero exit and one line naming the file."""
  cut = shutil.copytree(checkpoint[1], tmp_path / "cut")
  weights = os.path.join(cut, "model.safetensors")
  os.truncate(weights, os.path.getsize(weights) // 2)
  result = _train(str(tmp_path / "run"), *_CLI_FLAGS, f"--config.model.hf_dir={cut}")
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if weights in line]
  assert len(errors) == 1 and "truncated" in errors[0], result.stderr[-3000:]


def test_the_placeholder_hf_dir_stops_the_run_at_once_saying_what_to_pass(tmp_path):
  result = _train(str(tmp_path / "run"))
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if "model.hf_dir" in line]
  assert errors and "/path/to/Qwen3-8B" in errors[0], result.stderr[-3000:]
  assert "--config.model.hf_dir=DIR" in errors[0]
  assert not os.path.exists(tmp_path / "run")  # stopped before the workdir was made


def test_the_placeholder_embedder_stops_the_run_at_once_saying_what_to_pass(checkpoint,
                                                                             tmp_path):
  result = _train(str(tmp_path / "run"), f"--config.model.hf_dir={checkpoint[1]}")
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if "config field embedder=" in line]
  assert len(errors) == 1 and "/path/to/Qwen3-Embedding-0.6B does not exist" in errors[0]
  assert "--config.embedder" in errors[0], errors[0]
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.slow
def test_a_checkpoint_of_the_stage_wins_over_hf_dir(checkpoint, tmp_path):
  """A run whose SFT checkpoint is complete never reads model.hf_dir's weights (here cut in
  half): it resumes from the checkpoint, and exports that policy."""
  _, hf_dir = checkpoint
  cut = str(shutil.copytree(hf_dir, tmp_path / "cut"))
  config = _config(cut, sft__steps=1, grpo__steps=0)
  workdir = str(tmp_path / "run")
  job = setup.prepare(config, workdir)
  saved = state_lib.create_train_state(job.model_config, jax.random.key(7),
                                       state_lib.make_optimizer(
                                           config_lib.optimizer_config(config, "sft")),
                                       job.mesh)
  with stages.checkpointer(job, stages.SFT) as manager:
    manager.save(saved, {"stage": stages.SFT, "stage_step": 1}, step=1, force=True)
  job.writer.close()
  weights = os.path.join(cut, "model.safetensors")
  os.truncate(weights, os.path.getsize(weights) // 2)
  result = loop.run(config, workdir)
  _, exported = hf.load_hf(result["hf_dir"])
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               exported, saved.params)


# --- the paper configs as shipped: steps from epochs, intervals, the official schedules ----


def _contexts_file(path: str, count: int, seed: int) -> str:
  contexts = synthetic.generate_synthetic(count, seed=seed, num_docs=6, num_entities=4,
                                          num_cities=3, hops=1, num_updates=1, doc_length=4)
  multihop.save_long_contexts(contexts, path)
  return path


@pytest.mark.parametrize("name", ["qwen3_8b_a800", "qwen3_8b_tpu"])
def test_paper_configs_build_their_job_and_both_stages_have_steps(checkpoint, tmp_path, name):
  """With only model.hf_dir and the data files set (small contexts on this CPU's 8 devices),
  the paper configs' job builds with their own tokenizer and embedder, loads the checkpoint
  onto their mesh, and derives SFT and GRPO steps from their epochs (both > 0)."""
  _, hf_dir = checkpoint
  config = config_lib.load_config_file(name)
  config.model.hf_dir = hf_dir
  # The random Qwen3 as the paper's embedder (our Flax Qwen3-Embedding path).
  embedder_dir = shutil.copytree(hf_dir, tmp_path / "embedder")
  shutil.copy(os.path.join(tokenizer_lib.qwen3_tokenizer_dir(), "tokenizer.json"), embedder_dir)
  config.embedder = f"qwen3-embedding:{embedder_dir}"
  config.data.train_files = (_contexts_file(str(tmp_path / "train.jsonl"), 20, seed=0),)
  config.data.eval_files = (_contexts_file(str(tmp_path / "eval.jsonl"), 2, seed=1),)
  config_lib.validate(config)
  job = setup.prepare(config, str(tmp_path / "run"))
  assert len(job.tokenizer) > 150_000 and job.mesh.size == 8  # the real Qwen3 tokenizer
  contexts = contexts_lib.load_contexts(config, "train")
  examples = stages.sft_examples(job, contexts)
  sft_steps = setup.stage_steps(job, stages.SFT, lambda: len(examples))
  grpo_steps = setup.stage_steps(job, stages.GRPO, lambda: len(contexts))
  job.writer.close()
  assert sft_steps == 3 * max(len(examples) // 16, 1) > 0
  assert grpo_steps == 5 * (20 // 8) == 10
  job = setup.with_steps(job, sft=sft_steps, grpo=grpo_steps)
  for stage in (stages.SFT, stages.GRPO):
    state_lib.make_optimizer(config_lib.optimizer_config(job.config, stage))
  params = setup.initial_params(job, jax.random.key(0))
  assert params["embedder"]["embedding"].shape == (V, D)


def test_paper_hyperparameters_of_the_official_scripts():
  """Typed in from AtomMem/SFT/train_script/run.sh (TRL defaults) and
  AtomMem/script/train/run_memory_longcontext.sh (verl)."""
  c = config_lib.load_config_file("qwen3_8b_a800")
  assert (c.sft.steps, c.sft.epochs, c.sft.batch_size, c.sft.max_len) == (-1, 3, 16, 18432)
  assert (c.sft.lr, c.sft.warmup_steps, c.sft.schedule, c.sft.min_lr_ratio) == (
      2e-5, 0, "linear", 0.0)
  assert (c.sft.weight_decay, c.sft.grad_clip, c.sft.prompt_loss_weight) == (0.0, 1.0, 0.0)
  assert (c.grpo.steps, c.grpo.data_epochs, c.grpo.questions_per_batch, c.grpo.group_size) == (
      -1, 5, 8, 8)
  assert (c.rollout.temperature, c.rollout.top_p) == (1.0, 0.99)
  assert setup.every_steps(c, "grpo", "eval") == 20
  assert setup.every_steps(c, "grpo", "checkpoint") == 10
  assert setup.every_steps(c, "sft", "checkpoint") == 1000
  assert setup.every_steps(c, "sft", "eval") == 0
  tiny = config_lib.load_config_file("tiny")  # follows the sections' intervals
  tiny.checkpoint.every_steps = 2
  assert setup.every_steps(tiny, "sft", "checkpoint") == setup.every_steps(
      tiny, "grpo", "checkpoint") == 2


def test_linear_schedule_is_transformers_linear_schedule():
  c = config_lib.base_config()
  c.sft.steps = 50
  ours = state_lib.learning_rate_schedule(config_lib.optimizer_config(c, "sft"))
  optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=c.sft.lr)
  reference = transformers.get_linear_schedule_with_warmup(optimizer, 0, 50)
  for step in range(51):
    assert float(ours(step)) == pytest.approx(reference.get_last_lr()[0], rel=1e-5, abs=1e-12)
    optimizer.step()
    reference.step()


def _job(tmp_path, **sections) -> types.SimpleNamespace:
  config = config_lib.base_config()
  for section, fields in sections.items():
    config[section].update(fields)
  return types.SimpleNamespace(config=config, workdir=str(tmp_path))


def test_stage_steps_come_from_epochs_and_are_kept_for_a_resume(tmp_path):
  counted = []

  def count():
    counted.append(1)
    return 50

  job = _job(tmp_path, sft=dict(epochs=3, batch_size=16))
  assert setup.stage_steps(job, "sft", count) == 3 * 3  # 50 // 16 = 3 steps an epoch
  assert setup.stage_steps(job, "sft", count) == 9 and len(counted) == 1  # recorded
  with open(tmp_path / setup.STEPS_FILE) as f:
    assert json.load(f)["sft"] == {"steps": 9, "epochs": 3, "batch_size": 16, "items": 50}
  job.config.sft.epochs = 2  # another setting: counted again
  assert setup.stage_steps(job, "sft", count) == 6 and len(counted) == 2
  job.config.grpo.update(data_epochs=5, questions_per_batch=8)
  assert setup.stage_steps(job, "grpo", lambda: 3) == 5  # fewer than a batch: one step each
  job.config.sft.steps = 0
  assert setup.stage_steps(job, "sft", count) == 0  # explicit: skip, nothing counted
  assert len(counted) == 2


def test_stage_steps_from_no_data_is_an_error_naming_the_fields(tmp_path):
  job = _job(tmp_path)
  with pytest.raises(config_lib.ConfigError, match=r"grpo\.steps=-1.*grpo\.data_epochs=5.*"
                     r"--config\.grpo\.steps"):
    setup.stage_steps(job, "grpo", lambda: 0)


@pytest.mark.parametrize("field, value", [("sft.steps", -2), ("grpo.data_epochs", 0),
                                          ("sft.epochs", 0), ("grpo.checkpoint_every_steps", 0),
                                          ("sft.eval_every_steps", -1),
                                          ("checkpoint.every_steps", 0)])
def test_step_fields_are_validated_with_the_field_named(field, value):
  config = config_lib.base_config()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(config_lib.ConfigError, match=field.replace(".", r"\.")):
    config_lib.validate(config)


def test_a_bad_config_json_in_hf_dir_is_a_config_error_naming_file_and_field(checkpoint,
                                                                              tmp_path):
  src = shutil.copytree(checkpoint[1], tmp_path / "bad")
  with open(src / "config.json") as f:
    data = json.load(f)
  data["tie_word_embeddings"] = "false"
  with open(src / "config.json", "w") as f:
    json.dump(data, f)
  with pytest.raises(config_lib.ConfigError, match=r"model\.hf_dir=.*config\.json: field "
                     r"tie_word_embeddings='false'"):
    config_lib.model_config(_config(str(src)))
  (src / "config.json").write_text("{not json")
  with pytest.raises(config_lib.ConfigError, match=r"config\.json: .*line 1"):
    config_lib.model_config(_config(str(src)))
