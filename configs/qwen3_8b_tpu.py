"""The paper's run on a TPU v5p-32 slice: 16 chips (95 GB HBM each) on 4 hosts, FSDP over chips.

  TPU_NAME=my-v5p-32 ZONE=us-east5-a launch/tpu_pod.sh configs/qwen3_8b_tpu.py /mnt/shared/run \
      --config.model.hf_dir=/home/me/Qwen3-8B \
      --config.embedder=qwen3-embedding:/home/me/Qwen3-Embedding-0.6B

Everything but the mesh is configs/qwen3_8b_a800.py: the paper's hyperparameters, Qwen3-8B
(model.hf_dir and the embedder's directory must exist on every host: copy them to each
worker's disk), Qwen3-Embedding run by our Flax Qwen3 on each host's CPU, remat full, bf16
compute, and the same data files (also on every host).

Memory per chip: `python -m atommem_jax.aot --config configs/qwen3_8b_tpu.py --topology
v5p-32` compiles the run's programs for the slice through libtpu on any Linux host and
prints XLA:TPU's per-chip bytes against the 95.74 GiB it counts per v5p chip; exit status
1 if one does not fit. fsdp=-1 takes every chip of the slice (16 on a v5p-32; a v5p-64
gives 32), all over the ICI torus, so no data axis is needed. The rollout runs all
8 x 8 episodes of a GRPO step at once: 4 per chip on a v5p-32, 8 on a v5p-16. On a v5p-16 at the
base config's sizes XLA:TPU says (BENCHMARKS.md, "Fit at the paper's sizes"): grpo_step
38.6 GiB per chip (1 row x 20480 tokens), old_logprobs 19.8, sampler 65.2 (8 episodes at
16384 + 4096 tokens, with the GRPO state and reference resident). On a v5p-32 the estimate
(configs/qwen3_8b_a800.py; it reads 0.84-0.97 of XLA:TPU at 8B) is sft_step 19.5 GiB (1 row
x 18432 tokens), grpo_step 22.7, old_logprobs 11.6, sampler 28.6 (4 episodes).
"""

import os

from atommem_jax import config_lib


def get_config():
  c = config_lib.load_config_file("qwen3_8b_a800", directory=os.path.dirname(__file__))
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  return c
