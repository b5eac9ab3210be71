"""Training: batches, losses, steps, checkpoints, metrics, and the job (`python -m`).

Short re-exports, imported lazily, so that importing one module (`train.batch`, say) does
not import the whole job (tokenizers, the memory store, orbax):
  run(config, workdir) -> {"evaluations", "seconds", "hf_dir"}   the whole job (loop.run)
  TrainBatch, Example, pad_examples, pack_examples                 batch.py
  GRPOConfig, sft_loss, grpo_loss, group_advantages                losses.py
  OptimizerConfig, TrainState, create_train_state, abstract_train_state   state.py
  make_sft_step, make_grpo_step, grpo_update, make_logprobs_fn     steps.py
  Checkpointer (checkpoint.py), MetricWriter, StepTimer (metrics.py)
"""

import importlib

_LAZY = {
    "run": "loop",
    "TrainBatch": "batch", "Example": "batch", "pad_examples": "batch",
    "pack_examples": "batch",
    "GRPOConfig": "losses", "sft_loss": "losses", "grpo_loss": "losses",
    "group_advantages": "losses",
    "OptimizerConfig": "state", "TrainState": "state", "create_train_state": "state",
    "abstract_train_state": "state",
    "make_sft_step": "steps", "make_grpo_step": "steps", "grpo_update": "steps",
    "make_logprobs_fn": "steps",
    "Checkpointer": "checkpoint", "MetricWriter": "metrics", "StepTimer": "metrics",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(f"atommem_jax.train.{_LAZY[name]}"), name)
  raise AttributeError(f"module 'atommem_jax.train' has no attribute {name!r}")
