"""What every stage of the job shares: tokenizer, model config, mesh, env, embedder, writer.

`prepare` is stage 0: it checks that model.hf_dir (when set) is a checkpoint directory,
resolves the tokenizer (training the synthetic BPE once and reusing it from workdir/tokenizer
on resume), fits the model's vocabulary to it, and writes the resolved configs to the workdir
(config.json, and model_config.json / run.json through `run_files`) for export and
evaluation. The workdir may be a URL (gs://...; `atommem_jax.fileio`); the synthetic
tokenizer is then trained in a local temporary directory and uploaded.

`initial_params` is the policy before any training: the weights of model.hf_dir, read
straight into the mesh's layout, or a random init. `stage_steps` turns a stage's epochs into
steps (its `steps` field at -1), and `every_steps` says how often a stage checkpoints and
evaluates.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import jax
import ml_collections

from atommem_jax import config_lib
from atommem_jax import fileio
from atommem_jax.agent import env as env_lib
from atommem_jax.data import tokenizer as tokenizer_lib
from atommem_jax.memory import embed as embed_lib
from atommem_jax.model import hf
from atommem_jax.model import qwen3
from atommem_jax.model.config import Qwen3Config
from atommem_jax.rollout import host as host_lib
from atommem_jax.train import distributed
from atommem_jax.train import metrics as metrics_lib
from atommem_jax.train import contexts as contexts_lib
from atommem_jax.train import run_files
from atommem_jax.train import tokenizer_training

_VOCAB_MULTIPLE = 128
STEPS_FILE = "steps.json"  # the steps derived from epochs, kept for resumed runs
# Per stage: (field of passes over the data, field of items a step, the items, their source).
_EPOCHS = {"sft": ("epochs", "batch_size", "SFT examples",
                   "oracle steps of data.train_files, or data.sft_file rows"),
           "grpo": ("data_epochs", "questions_per_batch", "training contexts",
                    "data.train_files")}


@dataclasses.dataclass
class Job:
  """The resolved pieces of one training run (built once, used by every stage)."""
  config: ml_collections.ConfigDict
  workdir: str
  mesh: jax.sharding.Mesh
  tokenizer: object
  tokenizer_dir: str
  model_config: Qwen3Config  # training dtypes
  rollout_config: Qwen3Config  # rollout dtypes, same architecture
  env_config: env_lib.EnvConfig
  embedder: embed_lib.Embedder
  writer: metrics_lib.MetricWriter

  @property
  def eos_ids(self) -> tuple[int, ...]:
    return host_lib.eos_token_ids(self.tokenizer)

  @property
  def pad_id(self) -> int:
    return self.tokenizer.pad_token_id

  def log(self, message: str) -> None:
    log(message)


def log(message: str) -> None:
  """Prints on process 0 only."""
  if jax.process_index() == 0:
    print(message, flush=True)


def _tokenizer(config, workdir: str, env_config, embedder) -> tuple[object, str]:
  """(tokenizer, its directory) for config.tokenizer (`tokenizer_lib.resolve_tokenizer_dir`):
  model.hf_dir's own tokenizer files when it has them (the model was trained with them: a
  Hugging Face checkpoint's, a shipped base's synthetic BPE); else "synthetic" is trained into
  workdir/tokenizer once, then reused."""
  name = config.tokenizer
  model_dir = config.model.hf_dir or None
  if name == tokenizer_lib.SYNTHETIC and not tokenizer_lib.has_tokenizer(model_dir):
    model_dir = fileio.join(workdir, "tokenizer")
    if not tokenizer_lib.has_tokenizer(model_dir):
      contexts = contexts_lib.synthetic_contexts(config, "train")
      vocab_size = config_lib.model_config(config).vocab_size
      with fileio.local_dir_to_write(model_dir) as local:
        tokenizer_training.train_synthetic_tokenizer(
            contexts, vocab_size, env_config, embedder, local,
            oracle_options=config_lib.oracle_options(config))
  try:
    directory = tokenizer_lib.resolve_tokenizer_dir(name, model_dir)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from e
  return tokenizer_lib.load_tokenizer(directory), directory


def _model_configs(config, vocab_needed: int, log) -> tuple[Qwen3Config, Qwen3Config]:
  """Training and rollout configs (preset + model.overrides), vocab grown to the tokenizer's."""
  train, rollout = (config_lib.model_config(config, rollout=r) for r in (False, True))
  if train.vocab_size < vocab_needed:
    if config.model.hf_dir:
      raise config_lib.ConfigError(
          f"config field tokenizer={config.tokenizer!r} has {vocab_needed} tokens but the model "
          f"in model.hf_dir has vocab_size {train.vocab_size}; use the model's own tokenizer")
    vocab = -(-vocab_needed // _VOCAB_MULTIPLE) * _VOCAB_MULTIPLE
    log(f"note: model preset {config.model.preset!r} has vocab_size {train.vocab_size} < "
        f"{vocab_needed} tokenizer entries; using vocab_size {vocab}")
    train, rollout = train.replace(vocab_size=vocab), rollout.replace(vocab_size=vocab)
  return train, rollout


def check_hf_dir(config: ml_collections.ConfigDict) -> None:
  """Stops a run whose model.hf_dir is not a checkpoint directory (the paper configs ship a
  placeholder), before anything slow, saying what to pass."""
  hf_dir = config.model.hf_dir
  if hf_dir and not fileio.isfile(fileio.join(hf_dir, hf.CONFIG_FILE)):
    raise config_lib.ConfigError(
        f"config field model.hf_dir={hf_dir!r}: no {hf.CONFIG_FILE} there; pass "
        "--config.model.hf_dir=DIR, a Hugging Face Qwen3 checkpoint directory (config.json and "
        "model*.safetensors, e.g. a download of Qwen/Qwen3-8B), or --config.model.hf_dir='' "
        "to train model.preset from random init")


def prepare(config: ml_collections.ConfigDict, workdir: str) -> Job:
  """Stage 0: tokenizer, configs and the metric writer of a run in `workdir`."""
  check_hf_dir(config)
  try:
    embedder = embed_lib.make_embedder(config.embedder)
  except (OSError, ValueError) as e:  # e.g. the paper configs' placeholder directory
    raise config_lib.ConfigError(f"config field embedder={config.embedder!r}: {e}; set "
                                 "--config.embedder (e.g. qwen3-embedding:DIR or minilm)") from e
  workdir = fileio.canonical(workdir)
  fileio.makedirs(workdir)
  env_config = config_lib.env_config(config)
  tokenizer, tokenizer_dir = _tokenizer(config, workdir, env_config, embedder)
  model_config, rollout_config = _model_configs(config, len(tokenizer), log)
  if jax.process_index() == 0:
    fileio.write_text(fileio.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
    run_files.write(workdir, model_config, tokenizer_dir)
  return Job(config=config, workdir=workdir, mesh=config_lib.make_mesh(config),
             tokenizer=tokenizer, tokenizer_dir=tokenizer_dir, model_config=model_config,
             rollout_config=rollout_config, env_config=env_config, embedder=embedder,
             writer=metrics_lib.MetricWriter(workdir))


def initial_params(job: Job, key: jax.Array) -> dict[str, Any]:
  """The policy before training: model.hf_dir's weights, else a random init from `key`.

  A checkpoint is read straight into the job's mesh in model.param_dtype: each process reads
  only the slices its devices hold (`hf.load_hf`), never a whole copy on one host. A missing,
  truncated or corrupt weight file stops the run with a ConfigError naming the file.
  """
  hf_dir = job.config.model.hf_dir
  if not hf_dir:
    return qwen3.init_params(job.model_config, key, job.mesh)
  try:
    config, params = hf.load_hf(hf_dir, job.model_config.jnp_param_dtype, mesh=job.mesh,
                                config_overrides=config_lib.execution_fields(job.config))
  except (OSError, ValueError) as e:
    raise config_lib.ConfigError(f"config field model.hf_dir={hf_dir!r}: {e}") from e
  if config != job.model_config:
    raise config_lib.ConfigError(
        f"config field model.hf_dir={hf_dir!r}: its config.json changed while the run started "
        f"({config} != {job.model_config})")
  return params


def every_steps(config: ml_collections.ConfigDict, stage: str, kind: str) -> int:
  """How often `stage` ("pretrain", "sft", "grpo") does `kind` ("checkpoint", "eval"): the
  stage's own {kind}_every_steps when set, else the section's {kind}.every_steps (0: never,
  for eval)."""
  own = config[stage].get(f"{kind}_every_steps")
  return config[kind].every_steps if own is None else own


def _recorded_steps(workdir: str) -> dict:
  """workdir/steps.json as process 0 reads it (every process then derives the same steps)."""
  path = fileio.join(workdir, STEPS_FILE)
  recorded = json.loads(fileio.read_text(path)) if fileio.isfile(path) else {}
  return distributed.allgather_objects(recorded)[0]


def stage_steps(job: Job, stage: str, count: Callable[[], int]) -> int:
  """The number of steps of `stage`: {stage}.steps when >= 0 (0 skips the stage), else (-1)
  its epochs over its data, as the official trainers count them (TRL's num_train_epochs,
  verl's total_epochs, both dropping the last partial batch): epochs x (count() //
  items per step), at least one step per epoch (sft_data draws batches that way).

  A derived number is recorded in workdir/steps.json with the values it came from, so that a
  resumed run keeps it without counting the data again; `count()` runs only when there is no
  record for the same epochs and batch size (delete the file after changing the data).
  """
  section = job.config[stage]
  if section.steps >= 0:
    return section.steps
  epochs_field, batch_field, items, source = _EPOCHS[stage]
  epochs, batch = section[epochs_field], section[batch_field]
  recorded = _recorded_steps(job.workdir)
  kept = recorded.get(stage, {})
  if kept.get("epochs") == epochs and kept.get("batch_size") == batch:
    return kept["steps"]
  num_items = count()
  if num_items == 0:
    raise config_lib.ConfigError(
        f"config field {stage}.steps=-1 derives the steps from {stage}.{epochs_field}={epochs} "
        f"over the {items}, but there are none; give {source}, or set --config.{stage}.steps "
        "(0 skips the stage)")
  steps = epochs * max(num_items // batch, 1)
  log(f"{stage}: {epochs} epochs x {max(num_items // batch, 1)} steps of {batch} "
      f"({num_items} {items}) = {steps} steps")
  recorded[stage] = {"steps": steps, "epochs": epochs, "batch_size": batch, "items": num_items}
  if jax.process_index() == 0:
    fileio.write_text(fileio.join(job.workdir, STEPS_FILE), json.dumps(recorded, indent=2))
  return steps


def with_steps(job: Job, **steps: int) -> Job:
  """The job with concrete `steps` per stage in its config (e.g. sft=120, grpo=40)."""
  config = job.config.copy_and_resolve_references()
  for stage, count in steps.items():
    config[stage].steps = count
  return dataclasses.replace(job, config=config)
