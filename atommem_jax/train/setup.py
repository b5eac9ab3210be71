"""What every stage of the job shares: tokenizer, model config, mesh, env, embedder, writer.

`prepare` is stage 0: it resolves the tokenizer (training the synthetic BPE once and reusing
it from workdir/tokenizer on resume), fits the model's vocabulary to it, and writes the
resolved configs to the workdir (config.json, and model_config.json / run.json through
`run_files`) for export and evaluation. The workdir may be a URL (gs://...; `atommem_jax.fileio`);
the synthetic tokenizer is then trained in a local temporary directory and uploaded.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections

from atommem_jax import config_lib
from atommem_jax import fileio
from atommem_jax.agent import env as env_lib
from atommem_jax.data import tokenizer as tokenizer_lib
from atommem_jax.memory import embed as embed_lib
from atommem_jax.model.config import Qwen3Config
from atommem_jax.rollout import host as host_lib
from atommem_jax.train import metrics as metrics_lib
from atommem_jax.train import run_files
from atommem_jax.train import sft_data

_VOCAB_MULTIPLE = 128


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
  """(tokenizer, its directory) for config.tokenizer: "qwen3", "synthetic" or a directory."""
  name = config.tokenizer
  if name == "qwen3":
    directory = tokenizer_lib.qwen3_tokenizer_dir()
  elif name == sft_data.SYNTHETIC_TOKENIZER:
    directory = fileio.join(workdir, "tokenizer")
    if not fileio.isfile(fileio.join(directory, "tokenizer_config.json")):
      contexts = sft_data.synthetic_contexts(config, "train")
      vocab_size = config_lib.model_config(config).vocab_size
      with fileio.local_dir_to_write(directory) as local:
        sft_data.train_synthetic_tokenizer(
            contexts, vocab_size, env_config, embedder, local,
            split_space_before_capitals=config.synthetic_tokenizer.split_space_before_capitals,
            oracle_options=config_lib.oracle_options(config))
  else:
    directory = name
    if not fileio.isdir(directory):
      raise config_lib.ConfigError(f"config field tokenizer={name!r}: not 'qwen3', 'synthetic' "
                                   "or an existing tokenizer directory")
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


def prepare(config: ml_collections.ConfigDict, workdir: str) -> Job:
  """Stage 0: tokenizer, configs and the metric writer of a run in `workdir`."""
  workdir = fileio.canonical(workdir)
  fileio.makedirs(workdir)
  env_config = config_lib.env_config(config)
  embedder = embed_lib.make_embedder(config.embedder)
  tokenizer, tokenizer_dir = _tokenizer(config, workdir, env_config, embedder)
  model_config, rollout_config = _model_configs(config, len(tokenizer), log)
  if jax.process_index() == 0:
    fileio.write_text(fileio.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
    run_files.write(workdir, model_config, tokenizer_dir)
  return Job(config=config, workdir=workdir, mesh=config_lib.make_mesh(config),
             tokenizer=tokenizer, tokenizer_dir=tokenizer_dir, model_config=model_config,
             rollout_config=rollout_config, env_config=env_config, embedder=embedder,
             writer=metrics_lib.MetricWriter(workdir))
