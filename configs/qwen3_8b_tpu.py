"""The paper's run on a TPU v5p slice (v5p-16: 8 chips of 95 GB HBM on 2 hosts), FSDP over chips.

  TPU_NAME=my-v5p-16 ZONE=us-east5-a launch/tpu_pod.sh configs/qwen3_8b_tpu.py /mnt/shared/run \
      --config.model.hf_dir=/home/me/Qwen3-8B \
      --config.embedder=qwen3-embedding:/home/me/Qwen3-Embedding-0.6B

Everything but the mesh is configs/qwen3_8b_a800.py: the paper's hyperparameters, Qwen3-8B
(model.hf_dir and the embedder's directory must exist on every host: copy them to each
worker's disk), Qwen3-Embedding run by our Flax Qwen3 on each host's CPU, remat full, bf16
compute, and the same data files (also on every host).

Memory per chip: `python -m atommem_jax.aot --config configs/qwen3_8b_tpu.py --topology
v5p-16` compiles the run's programs for the slice through libtpu on any Linux host and
prints XLA:TPU's per-chip bytes against the 95.74 GiB it counts per v5p chip; exit status
1 if one does not fit. fsdp=-1 takes every chip of the slice, all over the ICI torus, so no
data axis is needed. The rollout runs all 8 x 8 episodes of a GRPO step at once: 8 per chip
on a v5p-16, 4 on a v5p-32. On a v5p-16 (8 chips) XLA:TPU says, GiB per chip
(BENCHMARKS.md, "Fit at the paper's sizes"):
  sft_step      2 rows x 18432 tokens (sft.batch_size 16 over 8 chips)          45.8
  grpo_step     1 row x 20480 tokens a micro-batch (grpo.micro_batch_rows 1)    47.8
  old_logprobs  the same rows, forward only, the GRPO state resident            19.8
  sampler       8 episodes x (16384 prompt + 4096 new), state + reference       65.2
  episode_loop  the jitted loop around it                                       68.7
so the paper's shapes fit a v5p-16 as they are; a larger slice only lowers them.
"""

import os

from atommem_jax import config_lib


def get_config():
  c = config_lib.load_config_file("qwen3_8b_a800", directory=os.path.dirname(__file__))
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  return c
