"""The paper's run on a TPU v5p-32 slice: 16 chips (95 GB HBM each) on 4 hosts, FSDP over chips.

  TPU_NAME=my-v5p-32 ZONE=us-east5-a launch/tpu_pod.sh configs/qwen3_8b_tpu.py /mnt/shared/run \
      --config.model.hf_dir=/home/me/Qwen3-8B

Everything but the mesh is configs/qwen3_8b_a800.py: the paper's hyperparameters, Qwen3-8B
(model.hf_dir must exist on every host: copy it to each worker's disk), remat full, bf16
compute, and the same data files (also on every host).

Memory per chip: the 131 GB of fp32 weights, gradients and Adam moments over 16 chips are
8.2 GB; the bf16 reference and rollout copies 1 GB each; the 128 episodes of a GRPO batch
are 8 per chip, 8 x 2.4 GB = 19 GB of KV cache. fsdp=-1 takes every chip of the slice
(16 on a v5p-32; a v5p-64 gives 32), all over the ICI torus, so no data axis is needed.
"""

import os

from atommem_jax import config_lib


def get_config():
  c = config_lib.load_config_file("qwen3_8b_a800", directory=os.path.dirname(__file__))
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  return c
