r"""`python -m atommem_jax.aot --config configs/NAME.py --topology v5p-16`: does a run fit?

Compiles, ahead of time and without the hardware, the programs a training run uses, with the
config's mesh and shardings, and prints per program and device the compiler's argument,
temporary, output and aliased bytes, the run's other arrays resident meanwhile, the total
against the device's memory, and a verdict. Exit status 1 when a program does not fit (the
compiler's RESOURCE_EXHAUSTED counts, reported with the bytes it wanted).

Programs, each built by the code a run uses (`train.steps`, `rollout.sampler`,
`rollout.episode`; shapes from jax.eval_shape, never real weights):
  sft_step      the SFT step at sft.max_len, sft.batch_size rows per step over the batch
                shards, split into sft.grad_accum micro-batches (--sft_rows overrides the
                rows per device per micro-batch);
  grpo_step     the GRPO step at the largest training bucket (largest prompt bucket +
                rollout.max_new_tokens) with the reference params, grpo.micro_batch_rows
                rows per device per micro-batch (--grpo_rows; 1 where it is 0, which takes
                a whole mini-batch, of however many turns, at once), two micro-batches
                accumulated;
  old_logprobs  with grpo.old_logprobs="recompute", the log-prob forward run before each
                update on the same batch (`steps.make_logprobs_fn`), the state resident;
  sampler       `sampler.sample` jitted as the episode loop runs it, at the largest prompt
                bucket + max_new_tokens, for the rollout batch per device
                (grpo.questions_per_batch x grpo.group_size over the batch shards; --rollout_rows);
                the training state and the reference stay resident meanwhile;
  episode_loop  the jitted episode loop (prompt buckets in a lax.switch, io_callbacks to the
                hosts); libtpu compiles its callbacks ahead of time.

Topologies (`atommem_jax.topologies`): TPU slices (v5p-8 ... v6e-256) compile through libtpu
(`pip install -e '.[tpu]'`, which `make test` does) on this CPU host. There is no CUDA compiler without a GPU, so
"cpu-N" compiles for N host devices, which checks that every sharding is legal, and prints
`estimate`'s analytic per-GPU bytes against an A800 80GB at XLA's 92 per cent share.

The tokenizer does not enter the programs: the model's vocabulary is the preset's (or
model.hf_dir's), and a model.hf_dir that does not exist here falls back to model.preset.
"""

from __future__ import annotations

import os

# Compile for a TPU slice from this host: keep JAX on the CPU, libtpu off the metadata server
# and off its one-process lockfile (several compiles may run at once).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import dataclasses  # pylint: disable=g-import-not-at-top,wrong-import-position
import functools
import math
import re
import sys
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app
from absl import flags
from jax.experimental import topologies as jax_topologies
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import config_flags

from atommem_jax import cli
from atommem_jax import config_lib
from atommem_jax import fileio
from atommem_jax import topologies
from atommem_jax.data import tokenizer as tokenizer_lib
from atommem_jax.memory import embed as embed_lib
from atommem_jax.model import qwen3
from atommem_jax.model import sharding
from atommem_jax.model.config import Qwen3Config
from atommem_jax.rollout import episode as episode_lib
from atommem_jax.rollout import sampler
from atommem_jax.train import batch as batch_lib
from atommem_jax.train import state as state_lib
from atommem_jax.train import steps as steps_lib

GiB = topologies.GiB
PROGRAMS = ("sft_step", "grpo_step", "old_logprobs", "sampler", "episode_loop")
_HOST_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def tree_bytes(tree) -> int:
  """Bytes per device of a tree of arrays / ShapeDtypeStructs with shardings (one shard)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * leaf.dtype.itemsize
  return total


def request_host_devices(count: int) -> None:
  """Asks XLA for `count` host devices; call it before JAX first lists its devices."""
  flags_now = os.environ.get("XLA_FLAGS", "")
  if _HOST_DEVICES_FLAG not in flags_now:
    os.environ["XLA_FLAGS"] = f"{flags_now} {_HOST_DEVICES_FLAG}={count}".strip()


def topology_devices(topology: topologies.Topology) -> list:
  """The slice's devices: TPU device descriptions from libtpu, or host CPU devices."""
  if topology.is_tpu:
    description = jax_topologies.get_topology_desc(
        platform="tpu", topology_name=topology.topology_name,
        chip_config_name=topology.chip_config_name,
        chips_per_host_bounds=topology.chips_per_host_bounds, num_slices=1)
    return list(description.devices)
  cpus = jax.devices("cpu")
  if len(cpus) < topology.num_devices:
    raise ValueError(f"topology {topology.name} needs {topology.num_devices} host devices but "
                     f"JAX has {len(cpus)}; set XLA_FLAGS={_HOST_DEVICES_FLAG}="
                     f"{topology.num_devices} before JAX starts")
  return cpus[:topology.num_devices]


def resolved_config(c: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, str]:
  """The config with a model.hf_dir that is not here replaced by its preset, and a note."""
  if c.model.hf_dir and not fileio.isfile(fileio.join(c.model.hf_dir, "config.json")):
    c = ml_collections.ConfigDict(c.to_dict())
    hf_dir, c.model.hf_dir = c.model.hf_dir, ""
    return c, (f"note: model.hf_dir={hf_dir!r} has no config.json here; compiling the "
               f"{c.model.preset!r} preset's architecture")
  return c, ""


@dataclasses.dataclass(frozen=True)
class Program:
  """One program of a run, ready to lower for a mesh.

  resident: bytes per device of the run's other arrays that stay live while it runs.
  """
  name: str
  shape: str
  lower: Callable[[], jax.stages.Lowered]
  resident: int = 0


@dataclasses.dataclass(frozen=True)
class Fit:
  """The compiler's per-device bytes of one program (or why there are none)."""
  name: str
  shape: str
  argument: int = 0
  temporary: int = 0
  output: int = 0
  alias: int = 0
  code: int = 0
  resident: int = 0
  wanted: int | None = None  # RESOURCE_EXHAUSTED: the bytes the compiler asked for
  error: str | None = None  # any other failure, one line
  seconds: float = 0.0
  estimate: tuple[tuple[str, int], ...] = ()  # cpu-N: the analytic per-GPU parts instead

  @property
  def program_bytes(self) -> int:
    if self.wanted is not None:
      return self.wanted
    return self.argument + self.temporary + self.output - self.alias + self.code

  @property
  def total(self) -> int:
    if self.estimate:
      return sum(part for _, part in self.estimate)
    return self.program_bytes + self.resident

  def fits(self, capacity: int) -> bool:
    return self.error is None and self.wanted is None and self.total <= capacity


# XLA:TPU's refusals: "the total memory required for HLO temporaries (102.69G) exceeds
# available HBM (95.74G)" (arguments and outputs included), or "Used 430.51G of 95.74G hbm".
_WANTED = (re.compile(r"required for [\w ]+ \(([\d.]+)([KMGT])\) exceeds available HBM"),
           re.compile(r"Used ([\d.]+)([KMGT]) of [\d.]+[KMGT] hbm"))
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def wanted_bytes(message: str) -> int | None:
  """The bytes a RESOURCE_EXHAUSTED message says the program needs (None if none named)."""
  for pattern in _WANTED:
    match = pattern.search(message)
    if match:
      return int(float(match.group(1)) * _UNITS[match.group(2)])
  return None


def compile_program(program: Program) -> Fit:
  """Lowers and compiles `program`; its memory analysis, or the reason it did not compile."""
  start = time.perf_counter()
  base = dict(name=program.name, shape=program.shape, resident=program.resident)
  try:
    compiled = program.lower().compile()
  except Exception as e:  # pylint: disable=broad-except  # the compiler's verdict, reported
    message = str(e)
    seconds = time.perf_counter() - start
    if "RESOURCE_EXHAUSTED" in message:
      wanted = wanted_bytes(message)
      if wanted is not None:
        return Fit(**base, wanted=wanted, seconds=seconds)
    first = next((line for line in message.splitlines() if line.strip()), type(e).__name__)
    return Fit(**base, error=f"{type(e).__name__}: {first[:300]}", seconds=seconds)
  stats = compiled.memory_analysis()
  return Fit(**base, argument=stats.argument_size_in_bytes,
             temporary=stats.temp_size_in_bytes, output=stats.output_size_in_bytes,
             alias=stats.alias_size_in_bytes, code=stats.generated_code_size_in_bytes,
             seconds=time.perf_counter() - start)


# --- The programs of a run -------------------------------------------------------------------


def abstract_batch(mesh: Mesh, rows: int, length: int) -> batch_lib.TrainBatch:
  """A TrainBatch [rows, length] of ShapeDtypeStructs laid out as the train steps take it."""
  host = batch_lib.pad_examples([], length=length, num_rows=rows)
  layout = sharding.logical_to_sharding(("batch", "length"), mesh, sharding.DEFAULT_RULES,
                                        (rows, length))
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=layout), host)


def _abstract_rows(mesh: Mesh, shape: tuple[int, ...], dtype) -> jax.ShapeDtypeStruct:
  axes = ("act_batch", "act_length")[:len(shape)]
  layout = sharding.logical_to_sharding(axes, mesh, sharding.DEFAULT_RULES, shape)
  return jax.ShapeDtypeStruct(shape, dtype, sharding=layout)


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Rows per device of each program (per micro-batch for the steps) and lengths."""
  sft_rows: int
  sft_length: int
  grpo_rows: int
  grpo_length: int
  rollout_rows: int
  prompt_length: int
  max_new_tokens: int


def default_sizes(c: ml_collections.ConfigDict, shards: int, *, sft_rows: int | None = None,
                  grpo_rows: int | None = None, rollout_rows: int | None = None) -> Sizes:
  """What a run of config `c` compiles on `shards` batch shards (the flags may override)."""
  s, g, r = c.sft, c.grpo, c.rollout
  prompt = max(r.prompt_buckets)
  return Sizes(
      sft_rows=sft_rows or -(-s.batch_size // (shards * s.grad_accum)), sft_length=s.max_len,
      grpo_rows=grpo_rows or g.micro_batch_rows or 1, grpo_length=prompt + r.max_new_tokens,
      rollout_rows=rollout_rows or -(-g.questions_per_batch * g.group_size // shards),
      prompt_length=prompt, max_new_tokens=r.max_new_tokens)


def _sampling(c: ml_collections.ConfigDict, train_config: Qwen3Config) -> sampler.SamplingConfig:
  eos = train_config.eos_token_id if train_config.eos_token_id is not None else 0
  return config_lib.sampling_config(c, eos_ids=(eos,), pad_id=0)


def _lower_step(step, state, *args) -> jax.stages.Lowered:
  """A train step as the run calls it: state donated, the rest laid out by its shardings."""
  return jax.jit(step, donate_argnums=(0,)).lower(state, *args)


def programs(c: ml_collections.ConfigDict, mesh: Mesh, sizes: Sizes,
             names: Sequence[str] = PROGRAMS) -> list[Program]:
  """The run's programs on `mesh`, built by the functions the train CLI calls."""
  train_config = config_lib.model_config(c)
  rollout_config = config_lib.model_config(c, rollout=True)
  shards = steps_lib.batch_shards(mesh)
  out = []
  sft_optimizer = state_lib.make_optimizer(config_lib.optimizer_config(c, "sft"))
  grpo_optimizer = state_lib.make_optimizer(config_lib.optimizer_config(c, "grpo"))
  grpo_settings = config_lib.grpo_config(c)
  use_ref = grpo_settings.kl_estimator != "none"
  reference = state_lib.abstract_params(train_config, mesh) if use_ref else None
  grpo_state = state_lib.abstract_train_state(train_config, grpo_optimizer, mesh)
  # While episodes roll out, the GRPO state and the reference stay on the devices.
  rollout_resident = tree_bytes(grpo_state) + (tree_bytes(reference) if use_ref else 0)

  if "sft_step" in names:
    s = c.sft
    step = steps_lib.make_sft_step(train_config, sft_optimizer, mesh,
                                   grad_accum_steps=s.grad_accum,
                                   prompt_loss_weight=s.prompt_loss_weight,
                                   loss_chunk=s.loss_chunk)
    state = state_lib.abstract_train_state(train_config, sft_optimizer, mesh)
    batch = abstract_batch(mesh, sizes.sft_rows * shards * s.grad_accum, sizes.sft_length)
    out.append(Program(
        "sft_step", f"{sizes.sft_rows} x {sizes.sft_length} tokens, {s.grad_accum} micro",
        functools.partial(_lower_step, step, state, batch)))

  if "grpo_step" in names or "old_logprobs" in names:
    g = c.grpo
    # As stages.run_grpo builds them: micro-batches of grpo_rows rows per device (two of
    # them, so the program accumulates as a run's does), a row's targets at most a response.
    micro = 2 if g.micro_batch_rows else 1
    split = dict(micro_batch_rows=sizes.grpo_rows if g.micro_batch_rows else 0,
                 loss_chunk=g.loss_chunk, max_targets_per_row=c.rollout.max_new_tokens)
    step = steps_lib.make_grpo_step(train_config, grpo_optimizer, grpo_settings, mesh, **split)
    batch = abstract_batch(mesh, sizes.grpo_rows * shards * micro, sizes.grpo_length)
    shape = f"{sizes.grpo_rows} x {sizes.grpo_length} tokens, {micro} micro"
    if "grpo_step" in names:
      out.append(Program("grpo_step", shape,
                         functools.partial(_lower_step, step, grpo_state, reference, batch)))
    if "old_logprobs" in names and g.old_logprobs == "recompute":  # the state resident
      logprobs = steps_lib.make_logprobs_fn(train_config, mesh,
                                            temperature=grpo_settings.temperature, **split)
      out.append(Program(
          "old_logprobs", shape,
          lambda: jax.jit(logprobs).lower(grpo_state.params, batch),
          resident=rollout_resident - tree_bytes(grpo_state.params)))

  rows = sizes.rollout_rows * shards
  params = state_lib.abstract_params(rollout_config, mesh)
  key_data = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=NamedSharding(mesh, PartitionSpec()))
  sampling = _sampling(c, train_config)
  if "sampler" in names:
    prompt = _abstract_rows(mesh, (rows, sizes.prompt_length), jnp.int32)
    active = _abstract_rows(mesh, (rows,), jnp.bool_)

    def sample(params, tokens, mask, active, key_data):
      return sampler.sample(rollout_config, params, tokens, mask,
                            jax.random.wrap_key_data(key_data), sampling, active=active,
                            mesh=mesh, rules=sharding.DEFAULT_RULES)
    out.append(Program(
        "sampler", f"{sizes.rollout_rows} x {sizes.prompt_length} + {sizes.max_new_tokens} new",
        lambda: jax.jit(sample).lower(params, prompt, prompt, active, key_data),
        resident=rollout_resident))

  if "episode_loop" in names:
    def lower_loop():
      tokenizer = tokenizer_lib.load_tokenizer(tokenizer_lib.qwen3_tokenizer_dir())
      loop = episode_lib.EpisodeLoop(
          rollout_config, tokenizer, config_lib.env_config(c), embed_lib.make_embedder("hashing:64"),
          batch_size=rows, prompt_buckets=tuple(c.rollout.prompt_buckets),
          sampling=_sampling(c, train_config), mesh=mesh)
      return loop.lower(params, key_data)
    out.append(Program(
        "episode_loop",
        f"{sizes.rollout_rows} episodes, buckets up to {sizes.prompt_length}",
        lower_loop, resident=rollout_resident))
  return out


# --- The analytic estimate (GPU meshes) -------------------------------------------------------


def _layer_params(config: Qwen3Config) -> int:
  d, n, k, h, f = (config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                   config.head_dim, config.intermediate_size)
  return d * h * (n + 2 * k) + n * h * d + 3 * d * f


def _attention_scores(config: Qwen3Config, rows: int, length: int, keys: int) -> int:
  """fp32 bytes of one layer's attention scores: whole [T, S] per head when dense, one
  (block_q, block_k) tile per head otherwise (blockwise / cuDNN / splash)."""
  heads = rows * config.num_attention_heads
  if config.attention == "dense":
    return heads * length * keys * 4
  return heads * min(config.attention_block_q, length) * min(config.attention_block_k, keys) * 4


def _layer_work(config: Qwen3Config, rows: int, length: int, keys: int, backward: bool) -> int:
  """One layer's live activations at once: q/k/v/attention out, the MLP's gate/up/hidden,
  the fp32 residual and norm, and the attention scores (doubled with their gradients)."""
  d, n, k, h, f = (config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                   config.head_dim, config.intermediate_size)
  width = jnp.dtype(config.jnp_dtype).itemsize
  tokens = rows * length
  values = tokens * ((2 * n + 2 * k) * h + 3 * f) * width + 2 * tokens * d * 4
  scores = 2 * _attention_scores(config, rows, length, keys)
  return (2 * values + 2 * scores) if backward else values + scores


# Live copies of one chunk's fp32 logits, as XLA:TPU keeps them (tests/test_aot.py): the
# log-softmax and its gradient fuse around ~1.5 copies, a forward ~1.25; a GRPO step also
# holds part of the reference's chunk.
_LOGIT_COPIES = {"backward": 1.5, "forward": 1.25, "backward_with_reference": 2.0}


def _logits_bytes(config: Qwen3Config, rows: int, length: int, chunk: int, copies: str) -> int:
  """fp32 logits of `chunk` positions (0: the whole row) times their live copies."""
  positions = min(chunk, length) if chunk else length
  return int(rows * positions * config.vocab_size * 4 * _LOGIT_COPIES[copies])


def estimate(c: ml_collections.ConfigDict, mesh: Mesh, sizes: Sizes, name: str
             ) -> list[tuple[str, int]]:
  """Per-device bytes of program `name`, by part: an analytic model of what XLA keeps live.

  Exact: the state, reference, parameters and KV cache (their shapes and shardings). Modelled:
  gradients (fp32, one more copy when accumulating), one layer's weights gathered over fsdp
  (compute dtype, twice for prefetch; plus their fp32 gradient in a backward pass), the
  layer inputs a full-remat scan saves (L x rows x T x D), one layer's working set while it
  is recomputed, and the logits (per `loss_chunk` positions where the losses chunk them).
  Checked against the TPU compiler in tests/test_aot.py.
  """
  train_config = config_lib.model_config(c)
  rollout_config = config_lib.model_config(c, rollout=True)
  tensor = mesh.shape["tensor"]
  if name == "old_logprobs":
    optimizer = state_lib.make_optimizer(config_lib.optimizer_config(c, "grpo"))
    state = state_lib.abstract_train_state(train_config, optimizer, mesh)
    width = jnp.dtype(train_config.jnp_dtype).itemsize
    rows, length = sizes.grpo_rows, sizes.grpo_length
    return [("state", tree_bytes(state)),
            ("reference", tree_bytes(state.params) if c.grpo.kl_estimator != "none" else 0),
            ("gathered layer", 2 * _layer_params(train_config) * width // tensor),
            ("layer", _layer_work(train_config, rows, length, length, backward=False)),
            ("logits", _logits_bytes(train_config, rows, min(length, c.rollout.max_new_tokens),
                                     c.grpo.loss_chunk, "forward"))]
  if name in ("sft_step", "grpo_step"):
    stage = "sft" if name == "sft_step" else "grpo"
    section = c[stage]
    optimizer = state_lib.make_optimizer(config_lib.optimizer_config(c, stage))
    state = state_lib.abstract_train_state(train_config, optimizer, mesh)
    params = tree_bytes(state.params)
    rows, length = ((sizes.sft_rows, sizes.sft_length) if name == "sft_step"
                    else (sizes.grpo_rows, sizes.grpo_length))
    width = jnp.dtype(train_config.jnp_dtype).itemsize
    layer = _layer_params(train_config)
    parts = [("state", tree_bytes(state))]
    with_reference = name == "grpo_step" and c.grpo.kl_estimator != "none"
    if with_reference:
      parts.append(("reference", params))
    parts += [
        ("grads", params * (2 if section.get("grad_accum", 1) > 1
                            or section.get("micro_batch_rows", 0) else 1)),
        ("gathered layer", layer * (2 * width + 4) // tensor),
        ("saved layer inputs", train_config.num_hidden_layers * rows * length
         * train_config.hidden_size * width),
        ("layer recompute", _layer_work(train_config, rows, length, length, backward=True)),
        # A GRPO row's lm head sees only its response (`max_targets_per_row`).
        ("logits", _logits_bytes(
            train_config, rows, length if name == "sft_step"
            else min(length, c.rollout.max_new_tokens), section.loss_chunk,
            "backward_with_reference" if with_reference else "backward")),
    ]
    return parts
  rows = sizes.rollout_rows * steps_lib.batch_shards(mesh)
  keys = sizes.prompt_length + sizes.max_new_tokens
  cache = jax.eval_shape(lambda: qwen3.init_cache(rollout_config, rows, keys))
  cache_layout = sharding.logical_to_sharding(qwen3.cache_logical_axes(), mesh,
                                              sharding.DEFAULT_RULES, cache)
  cache = jax.tree.map(lambda x, layout: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=layout),
                       cache, cache_layout)
  width = jnp.dtype(rollout_config.jnp_dtype).itemsize
  grpo_optimizer = state_lib.make_optimizer(config_lib.optimizer_config(c, "grpo"))
  parts = [("resident state", tree_bytes(state_lib.abstract_train_state(train_config,
                                                                         grpo_optimizer, mesh)))]
  if c.grpo.kl_estimator != "none":
    parts.append(("resident reference", tree_bytes(state_lib.abstract_params(train_config, mesh))))
  parts += [
      ("params", tree_bytes(state_lib.abstract_params(rollout_config, mesh))),
      ("kv cache", tree_bytes(cache)),
      ("gathered layer", 2 * _layer_params(rollout_config) * width // tensor),
      ("prefill layer", _layer_work(rollout_config, sizes.rollout_rows, sizes.prompt_length,
                                    keys, backward=False)),
      ("logits", _logits_bytes(rollout_config, sizes.rollout_rows, 1, 0, "forward")),
  ]
  return parts


# --- Report ------------------------------------------------------------------------------------


def _gib(value: int | None) -> str:
  return "" if value is None else f"{value / GiB:.1f}"


def verdict(fit: Fit, capacity: int) -> str:
  if fit.error is not None:
    return f"did not compile: {fit.error}"
  if fit.estimate:
    return ("fits (estimate)" if fit.total <= capacity else
            f"does not fit (estimate): {fit.total / GiB:.1f} GiB > {capacity / GiB:.1f} GiB")
  if fit.wanted is not None:
    return (f"does not fit: RESOURCE_EXHAUSTED, the compiler wanted {fit.wanted / GiB:.1f} GiB "
            f"(+ {fit.resident / GiB:.1f} GiB resident) of {capacity / GiB:.1f} GiB")
  if fit.fits(capacity):
    return "fits"
  return f"does not fit: {fit.total / GiB:.1f} GiB > {capacity / GiB:.1f} GiB"


def _columns(lines: list[tuple[str, ...]]) -> str:
  widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]) - 1)]
  return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths))
                   + "  " + line[-1] for line in lines)


def table(fits: Sequence[Fit], capacity: int) -> str:
  """The per-device table in GiB: the compiler's figures, or the estimate's parts."""
  if any(fit.estimate for fit in fits):
    lines = [("program", "shape per device", "compiled", "estimate", "limit", "verdict")]
    for fit in fits:
      lines.append((fit.name, fit.shape, "no" if fit.error else f"yes, {fit.seconds:.0f} s",
                    _gib(fit.total), _gib(capacity), verdict(fit, capacity)))
    parts = [f"{fit.name}: " + " + ".join(f"{name} {_gib(part)}" for name, part in fit.estimate)
             for fit in fits]
    return _columns(lines) + "\nestimate parts (GiB):\n  " + "\n  ".join(parts)
  lines = [("program", "shape per device", "args", "temp", "output", "aliased", "resident",
            "total", "HBM", "compile s", "verdict")]
  for fit in fits:
    lines.append((fit.name, fit.shape, _gib(fit.argument), _gib(fit.temporary),
                  _gib(fit.output), _gib(fit.alias), _gib(fit.resident),
                  _gib(fit.total) if fit.error is None else "", _gib(capacity),
                  f"{fit.seconds:.0f}", verdict(fit, capacity)))
  return _columns(lines)


PROG = "atommem_jax.aot"
config_flags.DEFINE_config_file("config", None, "experiment config (configs/*.py)")
_TOPOLOGY = flags.DEFINE_enum("topology", "v5p-16", list(topologies.TOPOLOGIES),
                              "slice to compile for (cpu-N: N host devices, GPU estimate)")
_PROGRAMS = flags.DEFINE_list("programs", list(PROGRAMS), f"programs to compile, of {PROGRAMS}")
_SFT_ROWS = flags.DEFINE_integer("sft_rows", None, "SFT rows per device per micro-batch")
_GRPO_ROWS = flags.DEFINE_integer("grpo_rows", None, "GRPO rows per device per micro-batch "
                                  "(grpo.micro_batch_rows, or 1)")
_ROLLOUT_ROWS = flags.DEFINE_integer("rollout_rows", None, "episodes per device in the sampler")


def run(c: ml_collections.ConfigDict, topology: topologies.Topology,
        names: Sequence[str] = PROGRAMS, *, sft_rows: int | None = None,
        grpo_rows: int | None = None, rollout_rows: int | None = None,
        out=sys.stdout) -> bool:
  """Compiles the programs of config `c` for `topology`, prints the table; True if all fit."""
  c, note = resolved_config(c)
  config_lib.validate(c)
  if note:
    print(note, file=out)
  devices = topology_devices(topology)
  mesh = config_lib.make_mesh(c, devices=devices)
  sizes = default_sizes(c, steps_lib.batch_shards(mesh), sft_rows=sft_rows, grpo_rows=grpo_rows,
                        rollout_rows=rollout_rows)
  print(f"{topology.name}: {len(devices)} x {devices[0].device_kind}, mesh "
        f"{dict(mesh.shape)}, {c.model.preset if not c.model.hf_dir else c.model.hf_dir}",
        file=out, flush=True)
  fits = []
  for program in programs(c, mesh, sizes, names):
    fit = compile_program(program)
    if not topology.is_tpu:  # host devices: shardings checked; memory from the estimate
      fit = dataclasses.replace(fit, estimate=tuple(estimate(c, mesh, sizes, program.name)))
    print(f"compiled {program.name} ({program.shape}) in {fit.seconds:.0f} s: "
          f"{verdict(fit, topology.hbm_bytes)}", file=sys.stderr, flush=True)
    fits.append(fit)
  print(table(fits, topology.hbm_bytes), file=out, flush=True)
  return all(fit.fits(topology.hbm_bytes) for fit in fits)


def main(argv: Sequence[str]) -> None:
  del argv  # cli.run refuses positional arguments
  config = cli.load_config(PROG, example="configs/qwen3_8b_tpu.py", cpu_devices=False)
  unknown = sorted(set(_PROGRAMS.value) - set(PROGRAMS))
  if unknown:
    raise app.UsageError(f"--programs {unknown}: not among {PROGRAMS}")
  topology = topologies.get(_TOPOLOGY.value)
  if not topology.is_tpu:
    request_host_devices(topology.num_devices)
  ok = run(config, topology, _PROGRAMS.value, sft_rows=_SFT_ROWS.value,
           grpo_rows=_GRPO_ROWS.value, rollout_rows=_ROLLOUT_ROWS.value)
  sys.exit(0 if ok else 1)


if __name__ == "__main__":
  cli.run(main, PROG)
