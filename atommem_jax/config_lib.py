"""The experiment config schema, its paper defaults, and typed views of it.

Config files under configs/ call `base_config()` and override fields; `validate` checks every
field at start and names the one that is wrong; the `*_config` functions turn sections into
the typed objects the code uses (Qwen3Config, EnvConfig, GRPOConfig, OptimizerConfig,
SamplingConfig, a mesh); `load_config_file` runs another config file (by name or path), so
that ablations can override any base config.

Sections: model, tokenizer, mesh, embedder, env, data, rollout, pretrain, sft, grpo, eval,
checkpoint, export. Where a dataclass consumes a section, the dataclass is the schema: the
section is filled from its defaults under the same field names, and its `__post_init__` is the one
place that checks them (raising ValueError("FIELD=VALUE: what is expected"), which
`validate` reports as `section.FIELD`):
- env: `agent.env.EnvConfig`, all of it;
- pretrain, sft, grpo: `OptimizerConfig` (but total_steps, from the section's steps), and grpo also
  `GRPOConfig` (but temperature, which is rollout.temperature);
plus the fields only the run reads (steps, epochs, batch sizes, intervals), checked here.
The rollout section's sampling fields (max_new_tokens, temperature, top_k, top_p: the paper's
values, not `rollout.sampler.SamplingConfig`'s generic defaults) are checked by
SamplingConfig alone too (`sampling_config`).
`OptimizerConfig` and `GRPOConfig` live here, not in train/, because this module builds them
and train/ imports it (train.state and train.losses re-export them).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import sys

import ml_collections

from atommem_jax import fileio
from atommem_jax.agent import env as env_lib
from atommem_jax.memory import embed as embed_lib
# model.config, model.sharding and rollout.sampler (lower layers: no cycle) are imported in the
# functions that use them: they load JAX and Flax (seconds), and the command-line tools check
# their flags with this module first, so that a bad flag is reported at once.

# The checkout's configs/ directory: where `load_config_file` finds config names.
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
# grpo.old_logprobs: where the PPO ratio's old log-probs come from.
OLD_LOGPROBS = ("recompute", "sampler")
# sft/grpo.schedule: the learning rate after the warm-up (OptimizerConfig).
SCHEDULES = ("constant", "cosine", "linear")
# grpo.kl_estimator and grpo.aggregation (GRPOConfig; train.losses).
KL_ESTIMATORS = ("k3", "k1", "none")
AGGREGATIONS = ("token-mean", "seq-mean-token-mean")
# pretrain.tasks: the generated tasks a pretraining row is drawn from (train/pretrain_data.py).
PRETRAIN_TASKS = ("recall", "copy", "documents", "qa", "facts")
# What the oracle's memory entries start with (oracle.OraclePolicy's entry_label).
ORACLE_ENTRY_LABELS = ("title", "question")
# pretrain.recall_facts: at most one fact per name of the synthetic pool (data.synthetic.NAMES).
_RECALL_NAMES = 377


def _check(config, ok: bool, name: str, expected: str) -> None:
  """Raises ValueError("NAME=VALUE: EXPECTED") unless `ok` (see the module docstring)."""
  if not ok:
    raise ValueError(f"{name}={getattr(config, name)!r}: {expected}")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """A stage's AdamW (`train.state.make_optimizer`): linear warm-up from 0, then constant, or a
  cosine or linear decay to min_lr_ratio x lr at total_steps.

  Defaults: AtomMem's GRPO on verl's actor optimizer (AdamW betas 0.9/0.999, weight decay
  0.01 on every parameter, clipping at global norm 1.0, warm-up then constant; lr 1e-6 and
  20 warm-up steps).
  """

  lr: float = 1e-6
  warmup_steps: int = 20
  schedule: str = "constant"
  min_lr_ratio: float = 0.0  # where a decay ends, as a fraction of lr
  weight_decay: float = 0.01
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  grad_clip: float = 1.0  # the global gradient norm is clipped to this; 0: no clipping
  total_steps: int = 0  # where a decay ends: needed (> warmup_steps) by cosine and linear

  def __post_init__(self):
    _check(self, self.lr > 0, "lr", "> 0")
    _check(self, self.warmup_steps >= 0, "warmup_steps", ">= 0")
    _check(self, self.schedule in SCHEDULES, "schedule", f"one of {SCHEDULES} (after the warm-up)")
    _check(self, 0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "in [0, 1] (where a decay ends)")
    _check(self, self.weight_decay >= 0, "weight_decay", ">= 0")
    for name in ("b1", "b2"):
      _check(self, 0 <= getattr(self, name) < 1, name, "in [0, 1) (Adam moment decay)")
    _check(self, self.eps > 0, "eps", "> 0")
    _check(self, self.grad_clip >= 0, "grad_clip", ">= 0 (0: no clipping)")
    _check(self, self.schedule == "constant" or self.total_steps > self.warmup_steps,
           "total_steps", f"> warmup_steps={self.warmup_steps} for the {self.schedule} decay")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  """The GRPO objective (`train.losses.grpo_loss`); defaults are the AtomMem paper's (verl)."""

  group_size: int = 8  # G rollouts per prompt
  normalize_std: bool = False  # advantage = reward - group mean (no std division)
  clip_low: float = 0.2
  clip_high: float = 0.28
  clip_ratio_c: float = 3.0  # verl dual-clip bound for A < 0; 0: no dual clip
  kl_coef: float = 0.001
  kl_estimator: str = "k3"
  aggregation: str = "token-mean"
  entropy_coef: float = 0.0
  temperature: float = 1.0  # the rollout temperature; logits are divided by it

  def __post_init__(self):
    _check(self, self.group_size >= 2, "group_size", ">= 2 (advantages are relative to the "
           "group)")
    _check(self, 0 <= self.clip_low < 1, "clip_low", "in [0, 1)")
    _check(self, self.clip_high >= 0, "clip_high", ">= 0")
    _check(self, self.clip_ratio_c == 0 or self.clip_ratio_c > 1, "clip_ratio_c",
           "> 1 (the dual-clip bound), or 0 for none")
    _check(self, self.kl_coef >= 0, "kl_coef", ">= 0")
    _check(self, self.kl_estimator in KL_ESTIMATORS, "kl_estimator", f"one of {KL_ESTIMATORS}")
    _check(self, self.aggregation in AGGREGATIONS, "aggregation", f"one of {AGGREGATIONS}")
    _check(self, self.temperature > 0, "temperature", "> 0")

  def loss_kwargs(self) -> dict:
    """Keyword arguments of `train.losses.grpo_loss` taken from this config."""
    return dict(clip_low=self.clip_low, clip_high=self.clip_high,
                clip_ratio_c=self.clip_ratio_c or None, kl_coef=self.kl_coef,
                kl_estimator=self.kl_estimator, aggregation=self.aggregation,
                entropy_coef=self.entropy_coef)


# Fields of the dataclasses that their sections do not hold (the views fill them).
_DERIVED = {OptimizerConfig: ("total_steps",), GRPOConfig: ("temperature",)}


def _section_fields(kind, **values) -> dict:
  """Config entries of dataclass `kind`'s fields: their defaults, or `values` where given; less
  the fields the views derive."""
  return {name: values.get(name, default) for name, default in _held_fields(kind).items()}


def _held_fields(kind) -> dict:
  """Name -> default of the fields of dataclass `kind` that its config section holds."""
  return {field.name: field.default for field in dataclasses.fields(kind)
          if field.name not in _DERIVED.get(kind, ())}


# Qwen3Config's architecture fields (model/config.py; the execution fields are model.*).
ARCHITECTURE_FIELDS = dict(
    vocab_size=int, hidden_size=int, intermediate_size=int, num_hidden_layers=int,
    num_attention_heads=int, num_key_value_heads=int, head_dim=int, rope_theta=float,
    rms_norm_eps=float, tie_word_embeddings=bool, attention_bias=bool,
    max_position_embeddings=int, bos_token_id=int, eos_token_id=int, pad_token_id=int)


def model_overrides(c: ml_collections.ConfigDict) -> dict:
  """The model.overrides that are set (not None)."""
  return {name: value for name, value in (c.model.get("overrides", None) or {}).items()
          if value is not None}


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing for the CLIs (`app.run(main, flags_parser=config_lib.parse_flags)`).

  A --config.FIELD=VALUE flag whose FIELD the config does not have (a misspelt name) stops
  the parse as a flags error naming the flag, instead of ml_collections' bare AttributeError
  with a traceback. Other errors (one raised inside a config file's get_config, say) are
  raised as they are.
  """
  from absl import app  # pylint: disable=g-import-not-at-top
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    message = e  # ml_collections: AttributeError(KeyError("'name'\nDid you mean ...?"))
    while isinstance(message, BaseException) and message.args:
      message = message.args[0]
    field, *hint = str(message).split("\n")
    field = field.strip("'\"")
    named = [arg.split("=")[0] for arg in argv[1:] if arg.startswith("--config.")
             and field in arg.split("=")[0].split(".")]
    if not named:
      raise
    text = (f"FATAL Flags parsing error: flag {', '.join(named)}: the config has no field "
            f"{field!r} there. {' '.join(hint)}")
    sys.stderr.write(text.rstrip() + "\n")
    sys.exit(1)


def _interval(steps: int) -> ml_collections.FieldReference:
  """A stage's checkpoint or evaluation interval: an int, or None for the section's."""
  return ml_collections.FieldReference(steps, field_type=int)


def base_config() -> ml_collections.ConfigDict:
  """All fields with the paper's hyperparameters (Qwen3-8B policy)."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Policy model: a preset (atommem_jax.model.config.PRESETS) or a Hugging Face directory.
  c.model = ml_collections.ConfigDict(dict(
      preset="qwen3-8b", hf_dir="", param_dtype="float32", dtype="bfloat16",
      rollout_dtype="bfloat16", remat="full", scan_layers=True,
      # Attention implementation (model/attention.py) and its tiles; "auto" picks by platform.
      attention="auto", attention_block_q=512, attention_block_k=512))
  # Architecture fields replacing the preset's (None: the preset's value), each a typed
  # placeholder so that any of them can be set on the command line
  # (--config.model.overrides.num_hidden_layers=4) and a misspelt one is refused.
  c.model.overrides = ml_collections.ConfigDict(
      {name: ml_collections.config_dict.placeholder(kind)
       for name, kind in ARCHITECTURE_FIELDS.items()})
  # "qwen3": the real Qwen3 tokenizer (offline); "synthetic": a small BPE trained on the
  # synthetic corpus (saved under workdir); or a tokenizer directory.
  c.tokenizer = "qwen3"
  # cpu_devices > 0: split the host CPU into that many XLA devices (one thread each), so that
  # a CPU-only run is data parallel over its cores; 0 leaves JAX's default (one device).
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, cpu_devices=0))
  # Embedder spec for atommem_jax.memory.embed.make_embedder ("minilm", "hashing:512",
  # "st:/dir", "qwen3-embedding:/dir" run by our Flax Qwen3, with options such as
  # "qwen3-embedding:/dir?device=accelerator&dtype=bfloat16").
  c.embedder = "minilm"

  # The episode (agent.env.EnvConfig, whose defaults are the paper's).
  c.env = ml_collections.ConfigDict(_section_fields(env_lib.EnvConfig))

  # Long-context QA data. kind: "synthetic" or "multihop" (files built by
  # `python -m atommem_jax.data.build`, .jsonl or .parquet).
  c.data = ml_collections.ConfigDict(dict(
      kind="multihop", train_files=(), eval_files=(), sft_file="",
      synthetic=ml_collections.ConfigDict(dict(
          train_contexts=0, eval_contexts=0, num_entities=8, num_cities=5, num_docs=16, hops=2,
          num_updates=2, doc_length=5, questions_per_context=1))))

  # top_p 0.99 at temperature 1: the official GRPO rollouts (evaluation is greedy).
  c.rollout = ml_collections.ConfigDict(dict(
      prompt_buckets=(2048, 4096, 8192, 12288, 16384), max_new_tokens=4096, temperature=1.0,
      top_p=0.99, top_k=0))

  # Pretraining from random init (train/pretrain_data.py): batch_size generated sequences a
  # step, each one task drawn by the weights of `tasks` ("name:weight,...", names of
  # PRETRAIN_TASKS): recall (key-value facts, then questions: the in-context lookup), copy
  # (a span of a training context twice), documents (language modelling on a span), qa
  # (documents then their questions and answers); rows of about max_len tokens. Recall's
  # curriculum: recall_facts_start facts at step 0, growing linearly to recall_facts over
  # recall_curriculum_steps (0: always recall_facts), recall_queries of them asked; a
  # recall_plain_share of the recall rows without the " is" between key and value. Every
  # probe_every_steps (0: never) the 16-fact lookup probe's accuracy is logged (with qa rows
  # from synthetic contexts, the reading probe's too: train/pretrain_data.py). steps=0 (the
  # default) skips the stage; it cannot be derived from epochs (no -1).
  c.pretrain = ml_collections.ConfigDict(dict(
      **_section_fields(OptimizerConfig, lr=1e-3, warmup_steps=20, weight_decay=0.0),
      steps=0, batch_size=128, max_len=256, tasks="recall:1", recall_facts=16,
      recall_facts_start=3, recall_curriculum_steps=0, recall_queries=16,
      recall_plain_share=0.5, probe_every_steps=100, loss_chunk=1024,
      checkpoint_every_steps=_interval(500),
      eval_every_steps=_interval(0)))

  # A stage's `steps`: -1 derives them from its epochs over its data (setup.stage_steps), 0
  # skips the stage, N > 0 runs N. A stage checkpoints / evaluates every
  # {checkpoint,eval}_every_steps, or where that is None every checkpoint.every_steps /
  # eval.every_steps. Its optimizer: the OptimizerConfig fields. SFT as the official script
  # (AtomMem/SFT/train_script/run.sh: TRL's SFTConfig under DeepSpeed ZeRO-3 on 8 GPUs): 3
  # epochs, 2 x 8 = 16 sequences a step of up to 18432 tokens (its --max_seq_length reads
  # 18384), TRL's lr 2e-5 decaying linearly to 0 (DeepSpeed's WarmupDecayLR), no warm-up, no
  # weight decay, clipping at 1.0, completion-only loss, a checkpoint every 1000 steps
  # (save_steps), no evaluation during SFT.
  c.sft = ml_collections.ConfigDict(dict(
      **_section_fields(OptimizerConfig, lr=2e-5, warmup_steps=0, schedule="linear",
                        weight_decay=0.0),
      steps=-1, epochs=3, batch_size=16, max_len=18432, grad_accum=1, packing=True,
      prompt_loss_weight=0.0,
      # Positions per lm-head call in the loss (model/logprobs.py): a row's fp32 logits are
      # never whole in memory; 0 projects the whole row at once.
      loss_chunk=1024,
      checkpoint_every_steps=_interval(1000), eval_every_steps=_interval(0),
      # Repeat-the-text examples mixed in, per training context (0: none), of copy_span_tokens.
      copy_examples_per_context=0, copy_span_tokens=96,
      # How the oracle writes its answers: "\\boxed{ text}" (see actions.render_actions).
      oracle_boxed_space=False,
      # What the oracle's memory entries start with: "title" ("Title: sentence ...") or
      # "question" (the question the sentences answer; see oracle.OraclePolicy).
      oracle_entry_label="title",
      # Share of the training contexts whose oracle episode starts from a wrong memory written
      # at the first chunk (a decoy, not taught), which the oracle repairs when the fact
      # appears (oracle.OraclePolicy's decoy_share; synthetic contexts only).
      oracle_decoy_share=0.0))

  # GRPO as the official run (AtomMem/script/train/run_memory_longcontext.sh, verl): 8
  # contexts x 8 rollouts a step (train_batch_size, rollout.n), 5 passes over the RL data
  # (total_epochs; `epochs` is PPO's passes over each step's rollouts), a checkpoint every 10
  # steps (save_freq) and an evaluation every 20 (test_freq). Its optimizer and objective:
  # the OptimizerConfig and GRPOConfig fields, at their defaults (the paper's).
  c.grpo = ml_collections.ConfigDict(dict(
      **_section_fields(OptimizerConfig), **_section_fields(GRPOConfig),
      steps=-1, data_epochs=5, questions_per_batch=8,
      # DAPO's dynamic sampling: while fewer than questions_per_batch groups of the step have
      # differing rewards (the rest have no advantage, so no gradient), draw that many more
      # contexts, up to max_draws rollouts a step; the step trains on the differing groups
      # first, then fills up with the others in draw order. 1: one draw, as verl's GRPO.
      max_draws=1,
      # Rows per batch shard in one forward and backward pass (verl's
      # ppo_micro_batch_size_per_gpu): a GRPO batch holds a row per turn of its episodes, so
      # its row count varies and the micro-batches are counted per batch; 0 takes each
      # mini-batch in one pass. `python -m atommem_jax.aot` says what fits.
      micro_batch_rows=0,
      # As sft.loss_chunk, for the policy's and the reference's log-probs. old_logprobs:
      # "recompute" them with the training forward before the update (verl; the first ratio
      # is exactly 1), or keep the "sampler"'s.
      loss_chunk=1024, old_logprobs="recompute",
      num_minibatches=1, epochs=1, checkpoint_every_steps=_interval(10),
      eval_every_steps=_interval(20)))

  c.eval = ml_collections.ConfigDict(dict(every_steps=0, num_contexts=0, batch_size=16))
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=50, max_to_keep=3, async_save=True))
  c.export = ml_collections.ConfigDict(dict(hf_dir=""))
  return c


class ConfigError(ValueError):
  """A config field is wrong; the message names it (e.g. `grpo.clip_high`)."""


def _fail(field: str, value, expected: str):
  raise ConfigError(f"config field {field}={value!r}: {expected}")


def _non_finite_fields(c: ml_collections.ConfigDict, prefix: str = ""):
  """(field, value) of every NaN or infinite number in `c`, nested sections included."""
  for name, value in c.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _non_finite_fields(value, f"{prefix}{name}.")
    elif isinstance(value, float) and not math.isfinite(value):
      yield prefix + name, value


def validate(c: ml_collections.ConfigDict) -> None:
  """Checks every field that the code cannot check cheaply later; raises ConfigError."""
  from atommem_jax.model import config as model_config_lib  # pylint: disable=g-import-not-at-top
  if not c.model.hf_dir and c.model.preset not in model_config_lib.PRESETS:
    _fail("model.preset", c.model.preset, f"one of {sorted(model_config_lib.PRESETS)} "
          "(or set model.hf_dir)")
  for field in ("param_dtype", "dtype", "rollout_dtype"):
    if c.model[field] not in ("float32", "bfloat16", "float16"):
      _fail(f"model.{field}", c.model[field], "float32, bfloat16 or float16")
  if c.model.remat not in model_config_lib.REMAT_POLICIES:
    _fail("model.remat", c.model.remat, f"one of {model_config_lib.REMAT_POLICIES}")
  if c.model.attention not in model_config_lib.ATTENTION_IMPLEMENTATIONS:
    _fail("model.attention", c.model.attention,
          f"one of {model_config_lib.ATTENTION_IMPLEMENTATIONS}")
  for field in ("attention_block_q", "attention_block_k"):
    if not isinstance(c.model[field], int) or c.model[field] < 1:
      _fail(f"model.{field}", c.model[field], "a positive integer")
  if c.model.hf_dir and model_overrides(c):
    _fail("model.overrides", model_overrides(c), "unset with model.hf_dir (a checkpoint's "
          "architecture comes from its config.json)")
  if not c.model.hf_dir:
    model_config(c)  # model.overrides name real fields with valid values
  for field, value in _non_finite_fields(c):
    _fail(field, value, "a finite number")
  try:
    embed_lib.parse_spec(c.embedder)
  except ValueError as e:
    _fail("embedder", c.embedder, str(e))
  sizes = [c.mesh.data, c.mesh.fsdp, c.mesh.tensor]
  if sum(s == -1 for s in sizes) > 1 or any(s == 0 or s < -1 for s in sizes):
    _fail("mesh", dict(c.mesh), "positive sizes, at most one of them -1")
  if c.mesh.get("cpu_devices", 0) < 0:
    _fail("mesh.cpu_devices", c.mesh.cpu_devices, ">= 0 (0: JAX's default of one CPU device)")
  if c.data.kind not in ("synthetic", "multihop"):
    _fail("data.kind", c.data.kind, "'synthetic' or 'multihop'")
  buckets = c.rollout.prompt_buckets
  if (not isinstance(buckets, (tuple, list)) or not buckets
      or any(not isinstance(b, int) or isinstance(b, bool) or b <= 0 for b in buckets)
      or list(buckets) != sorted(set(buckets))):
    _fail("rollout.prompt_buckets", buckets, "a non-empty increasing sequence of positive lengths")
  if c.sft.grad_accum < 1:
    _fail("sft.grad_accum", c.sft.grad_accum, ">= 1 micro-batches a step")
  if c.grpo.max_draws < 1:
    _fail("grpo.max_draws", c.grpo.max_draws, ">= 1 rollouts a step (1: no dynamic sampling)")
  if c.grpo.micro_batch_rows < 0:
    _fail("grpo.micro_batch_rows", c.grpo.micro_batch_rows,
          ">= 0 rows per batch shard (0: a mini-batch in one pass)")
  for section, epochs in (("sft", "epochs"), ("grpo", "data_epochs")):
    if c[section].steps < -1:
      _fail(f"{section}.steps", c[section].steps,
            f"-1 (from {section}.{epochs} over the data), 0 (skip the stage) or a step count")
    if c[section].steps == -1 and c[section][epochs] < 1:
      _fail(f"{section}.{epochs}", c[section][epochs], f">= 1 (passes over the data; or set "
            f"{section}.steps)")
    for kind, least in (("checkpoint", 1), ("eval", 0)):
      every = c[section].get(f"{kind}_every_steps")
      if every is not None and every < least:
        _fail(f"{section}.{kind}_every_steps", every,
              f">= {least}, or None for {kind}.every_steps")
    if c[section].loss_chunk < 0:
      _fail(f"{section}.loss_chunk", c[section].loss_chunk,
            ">= 0 positions per lm-head call (0: the whole row at once)")
  if c.checkpoint.every_steps < 1:
    _fail("checkpoint.every_steps", c.checkpoint.every_steps, ">= 1")
  if c.sft.copy_examples_per_context < 0:
    _fail("sft.copy_examples_per_context", c.sft.copy_examples_per_context,
          "a whole number >= 0 (0: no repeat-the-text examples)")
  if c.sft.copy_span_tokens < 1:
    _fail("sft.copy_span_tokens", c.sft.copy_span_tokens, ">= 1 tokens")
  if c.sft.prompt_loss_weight < 0:
    _fail("sft.prompt_loss_weight", c.sft.prompt_loss_weight, ">= 0 (0: completion-only loss)")
  if not 0.0 <= c.sft.oracle_decoy_share <= 1.0:
    _fail("sft.oracle_decoy_share", c.sft.oracle_decoy_share, "a share in [0, 1]")
  if c.sft.oracle_entry_label not in ORACLE_ENTRY_LABELS:
    _fail("sft.oracle_entry_label", c.sft.oracle_entry_label, f"one of {ORACLE_ENTRY_LABELS}")
  g = c.grpo
  if g.old_logprobs not in OLD_LOGPROBS:
    _fail("grpo.old_logprobs", g.old_logprobs, f"one of {OLD_LOGPROBS}")
  for field in ("num_minibatches", "epochs"):
    if g[field] < 1:
      _fail(f"grpo.{field}", g[field], ">= 1")
  _validate_pretrain(c)
  # The fields of the dataclasses check themselves.
  sampling_config(c, eos_ids=(), pad_id=0)
  env_config(c)
  for stage in ("pretrain", "sft", "grpo"):
    optimizer_config(c, stage)
  grpo_config(c)


def _validate_pretrain(c: ml_collections.ConfigDict) -> None:
  """The pretrain section's run fields (its optimizer fields check themselves)."""
  p = c.pretrain
  if p.steps < 0:
    _fail("pretrain.steps", p.steps, "0 (no pretraining) or a step count; pretraining has no "
          "data to count epochs over, so -1 is not supported")
  recall_facts_ok = isinstance(p.recall_facts, int) and 1 <= p.recall_facts <= _RECALL_NAMES
  least = {"batch_size": (1, "sequences a step"), "max_len": (2, "tokens a row"),
           "recall_queries": (1, "questions a recall row"),
           "recall_curriculum_steps": (0, "steps (0: always recall_facts)"),
           "probe_every_steps": (0, "steps (0: never)"),
           "loss_chunk": (0, "positions per lm-head call (0: the whole row at once)")}
  for field, (bound, unit) in least.items():
    if not isinstance(p[field], int) or p[field] < bound:
      _fail(f"pretrain.{field}", p[field], f"a whole number >= {bound} {unit}")
  if not recall_facts_ok:
    _fail("pretrain.recall_facts", p.recall_facts,
          f"a whole number of facts in [1, {_RECALL_NAMES}] (one key name each)")
  if not isinstance(p.recall_facts_start, int) or not 1 <= p.recall_facts_start <= p.recall_facts:
    _fail("pretrain.recall_facts_start", p.recall_facts_start,
          f"a whole number of facts in [1, recall_facts={p.recall_facts}]")
  share = p.recall_plain_share  # a float: the ConfigDict field casts or refuses other types
  if not 0 <= share <= 1:
    _fail("pretrain.recall_plain_share", share,
          "a share of the recall rows in [0, 1] (0: every row has the \" is\")")
  for kind, bound in (("checkpoint", 1), ("eval", 0)):
    every = p.get(f"{kind}_every_steps")
    if every is not None and every < bound:
      _fail(f"pretrain.{kind}_every_steps", every, f">= {bound}, or None for {kind}.every_steps")
  pretrain_tasks(p.tasks)


def pretrain_tasks(text: str) -> dict[str, float]:
  """pretrain.tasks as {task: weight} ("recall:4,copy:1"; a name alone weighs 1); a malformed
  list raises ConfigError naming pretrain.tasks and the item that is wrong."""
  expected = (f"comma-separated name:weight items with names from {list(PRETRAIN_TASKS)}, "
              "each at most once, and finite weights > 0 (e.g. 'recall:4,copy:1')")
  if not isinstance(text, str) or not text.strip():
    _fail("pretrain.tasks", text, expected)
  weights = {}
  for item in text.split(","):
    name, has_weight, weight = (part.strip() for part in item.partition(":"))
    try:
      value = float(weight) if has_weight else 1.0
    except ValueError:
      value = math.nan
    if name not in PRETRAIN_TASKS or name in weights or not (math.isfinite(value) and value > 0):
      _fail("pretrain.tasks", text, f"{expected}; {item.strip()!r} is not")
    weights[name] = value
  return weights


def execution_fields(c: ml_collections.ConfigDict, *, rollout: bool = False) -> dict:
  """Qwen3Config fields of how the model runs (dtypes, remat, scan, attention), for training or
  rollout."""
  return dict(param_dtype=c.model.rollout_dtype if rollout else c.model.param_dtype,
              dtype=c.model.rollout_dtype if rollout else c.model.dtype,
              remat="none" if rollout else c.model.remat, scan_layers=c.model.scan_layers,
              attention=c.model.attention, attention_block_q=c.model.attention_block_q,
              attention_block_k=c.model.attention_block_k)


def model_config(c: ml_collections.ConfigDict, *, rollout: bool = False):
  """Qwen3Config from model.preset with model.overrides, or from model.hf_dir/config.json.

  A training run may grow the vocabulary to its tokenizer; the config it really trained is
  in its workdir (`train.run_files`).
  """
  from atommem_jax.model import config as model_config_lib  # pylint: disable=g-import-not-at-top
  execution = execution_fields(c, rollout=rollout)
  if c.model.hf_dir:
    path = fileio.join(c.model.hf_dir, "config.json")
    if not fileio.isfile(path):
      _fail("model.hf_dir", c.model.hf_dir, f"a Hugging Face directory with config.json ({path} "
            "is missing)")
    try:
      hf_config = json.loads(fileio.read_text(path))
      if not isinstance(hf_config, dict):
        raise ValueError(f"{path}: expected a JSON object")
      return model_config_lib.Qwen3Config.from_hf_dict(hf_config, source=path, **execution)
    except ValueError as e:  # json.JSONDecodeError too
      _fail("model.hf_dir", c.model.hf_dir, f"{e}" if str(e).startswith(path) else f"{path}: {e}")
  overrides = model_overrides(c)
  try:
    return model_config_lib.preset(c.model.preset, **execution).replace(**overrides)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config field model.overrides={overrides}: {e}") from e


def oracle_options(c: ml_collections.ConfigDict) -> dict:
  """Keyword arguments of `oracle.OraclePolicy` from the sft section: how it writes answers
  and memory entries."""
  return dict(boxed_space=c.sft.oracle_boxed_space, entry_label=c.sft.oracle_entry_label)


def _typed(kind, section: str, fields: dict, **derived):
  """`kind(**fields of section, **derived)`: a field the dataclass lacks, or one its
  `__post_init__` refuses, raises ConfigError naming `section.field`."""
  unknown = sorted(set(fields) - set(_held_fields(kind)))
  if unknown:
    raise ConfigError(f"config section {section}: no field {', '.join(unknown)}; its fields are "
                      f"{kind.__name__}'s: {', '.join(_held_fields(kind))}")
  try:
    return kind(**fields, **derived)
  except ValueError as e:  # "FIELD=VALUE: what is expected"
    raise ConfigError(f"config field {section}.{e}") from e


def env_config(c: ml_collections.ConfigDict) -> env_lib.EnvConfig:
  """agent.env.EnvConfig: the env section."""
  return _typed(env_lib.EnvConfig, "env", dict(c.env))


def optimizer_config(c: ml_collections.ConfigDict, stage: str) -> OptimizerConfig:
  """The optimizer of stage "pretrain", "sft" or "grpo": its section's OptimizerConfig fields;
  a cosine or linear schedule decays over the stage's steps (concrete by training time:
  `setup.with_steps`).

  A stage of no more steps than its warm-up (a smoke run), or whose steps are still -1
  (derived later), has its decay end one step past the warm-up, which it never reaches.
  """
  section = c[stage]
  return _typed(OptimizerConfig, stage, {name: section[name] for name in _held_fields(
      OptimizerConfig)}, total_steps=max(section.steps, section.warmup_steps + 1))


def grpo_config(c: ml_collections.ConfigDict) -> GRPOConfig:
  """The GRPO objective: the grpo section's GRPOConfig fields, at rollout.temperature (the
  sampler's, by which the loss divides the logits)."""
  return _typed(GRPOConfig, "grpo", {name: c.grpo[name] for name in _held_fields(GRPOConfig)},
                temperature=c.rollout.temperature)


def sampling_config(c: ml_collections.ConfigDict, *, eos_ids, pad_id: int, greedy: bool = False):
  """rollout.sampler.SamplingConfig from the rollout section; a value it refuses raises
  ConfigError naming `rollout.FIELD` (its checks are the rollout fields' only ones)."""
  from atommem_jax.rollout import sampler  # pylint: disable=g-import-not-at-top
  r = c.rollout
  try:
    return sampler.SamplingConfig(max_new_tokens=r.max_new_tokens, greedy=greedy,
                                  temperature=r.temperature, top_k=r.top_k, top_p=r.top_p,
                                  eos_ids=tuple(eos_ids), pad_id=pad_id)
  except ValueError as e:  # "FIELD=VALUE; what is expected"
    raise ConfigError(f"config field rollout.{e}") from e


_HOST_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def request_cpu_devices(c: ml_collections.ConfigDict) -> bool:
  """Asks XLA for mesh.cpu_devices host devices; call it before JAX first lists its devices.

  An XLA_FLAGS that already sets the host device count wins (tests, launch scripts), and so
  does mesh.cpu_devices=0. It only shapes the CPU platform: on a GPU or TPU machine the mesh
  is still built from the accelerators. Returns whether it set the flag.
  """
  count = c.mesh.get("cpu_devices", 0)
  flags = os.environ.get("XLA_FLAGS", "")
  if count <= 0 or _HOST_DEVICES_FLAG in flags:
    return False
  os.environ["XLA_FLAGS"] = f"{flags} {_HOST_DEVICES_FLAG}={count}".strip()
  return True


def make_mesh(c: ml_collections.ConfigDict, devices=None):
  """The device mesh of the mesh section (axes data, fsdp, tensor) over all global devices."""
  from atommem_jax.model import sharding  # pylint: disable=g-import-not-at-top
  return sharding.make_mesh({"data": c.mesh.data, "fsdp": c.mesh.fsdp, "tensor": c.mesh.tensor},
                            devices=devices)


def load_config_file(name_or_path: str, *, directory: str | None = None
                     ) -> ml_collections.ConfigDict:
  """`get_config()` of a config file, found by name or path, from any working directory.

  `name_or_path` is a name ("tiny": `directory`/tiny.py, default the checkout's configs/) or a
  path to a .py file, optionally followed by ":ARG" as on the command line: "no_update:tiny"
  calls `get_config("tiny")` of no_update.py. Ablation configs use it to load their base.
  """
  spec, _, arg = name_or_path.partition(":")
  directory = directory or CONFIG_DIR
  is_path = spec.endswith(".py") or os.sep in spec
  path = spec if is_path else os.path.join(directory, f"{spec}.py")
  if not os.path.isfile(path):
    known = sorted(name[:-3] for name in os.listdir(directory) if name.endswith(".py")
                   ) if os.path.isdir(directory) else []
    raise ConfigError(f"config file {path!r} (from {name_or_path!r}) does not exist; give a "
                      f"path to a .py config file or one of the names {known} in {directory}")
  module_name = "atommem_jax_config_" + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"config file {path} has no get_config() function; define "
                      "get_config() returning an ml_collections.ConfigDict")
  return module.get_config(arg) if arg else module.get_config()
