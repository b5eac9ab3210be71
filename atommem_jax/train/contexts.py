"""The job's contexts: the training and evaluation splits (synthetic, or LongContext files),
and which contexts each GRPO step reads (a pure function of seed and step, like the SFT
batches, so that a resumed run reads the same ones)."""

from __future__ import annotations

import numpy as np

from atommem_jax import fileio
from atommem_jax.data import multihop
from atommem_jax.data import synthetic
from atommem_jax.train import sft_data


def synthetic_contexts(config, split: str) -> list[multihop.LongContext]:
  """Train (seed) or eval (seed + 1, as `atommem_jax.evaluate`) synthetic contexts."""
  fields = dict(config.data.synthetic)
  counts = {"train": fields.pop("train_contexts"), "eval": fields.pop("eval_contexts")}
  seed = config.seed + (1 if split == "eval" else 0)
  return synthetic.generate_synthetic(counts[split], seed=seed, **fields)


def load_contexts(config, split: str) -> list[multihop.LongContext]:
  """The split's contexts: synthetic, or the multihop files of data.{train,eval}_files."""
  if config.data.kind == "synthetic":
    return synthetic_contexts(config, split)
  field = "data.train_files" if split == "train" else "data.eval_files"
  files = config.data.train_files if split == "train" else config.data.eval_files
  missing = [path for path in files if not fileio.isfile(path)]
  if missing:
    raise multihop.DataError(f"config field {field}: no such file {missing[0]!r}; build one "
                             "with `python -m atommem_jax.data.build`")
  contexts = [c for path in files for c in multihop.load_long_contexts(path)]
  limit = config.eval.num_contexts if split == "eval" else 0
  return contexts[:limit] if limit else contexts


def grpo_context_indices(num_contexts: int, batch_size: int, seed: int, step: int,
                         draw: int = 0) -> np.ndarray:
  """Context indices of GRPO step `step` (0-based), drawn like the SFT batches; `draw` > 0:
  the step's further draws (grpo.max_draws), each from its own stream of batches."""
  return sft_data.sft_batch_indices(num_contexts, batch_size, seed + 1_000_003 * (draw + 1),
                                    step)
