r"""The paper's run: Qwen3-8B, SFT then GRPO, on one node of 8 x A800 80GB (N nodes: HSDP).

  python -m atommem_jax.train --config configs/qwen3_8b_a800.py --workdir runs/a800 \
      --config.model.hf_dir=/models/Qwen3-8B
  sbatch --nodes=N launch/gpu_slurm.sh ...  (several nodes; see launch/README.md)

Hyperparameters are the paper's (configs/base.py). Data: long contexts built from the
benchmarks' own files by `python -m atommem_jax.data.build`, one file per dataset and split,
at the default paths below (DATA_DIR, relative to the working directory), e.g.

  python -m atommem_jax.data.build --dataset hotpotqa --input hotpot_train_v1.1.json \
      --num_docs 200 --seed 0 --out data/atommem/hotpotqa_train_200.jsonl

and likewise 2wikimultihopqa and musique, train and dev. Elsewhere:
--config.data.train_files='("a.jsonl", "b.jsonl")' (and data.eval_files).

Memory per GPU (why mesh fsdp=8): Qwen3-8B has 8.19e9 parameters. Training holds fp32
master weights, fp32 gradients and two fp32 Adam moments, 16 bytes/param = 131 GB, more
than one 80 GB card; sharded over fsdp=8 it is 16.4 GB per GPU. The frozen bf16 reference
policy (16.4 GB) and the bf16 rollout copy (16.4 GB) are sharded the same way, 2 GB each
per GPU. That leaves ~58 GB per GPU for
- rollouts: the bf16 KV cache is 2 x 8 kv heads x 128 x 36 layers x 2 B = 147 KB/token,
  2.4 GB for a 16k-token episode step (12288 prompt bucket + 4096 generated); the
  16 x 8 = 128 episodes of a GRPO batch over 8 GPUs are 16 per GPU, ~39 GB;
- training (remat full): per 16k-token row, the saved layer inputs 36 x 16384 x 4096 x
  2 B = 4.8 GB, plus fp32 logits and their gradient, 2 x 16384 x 151936 x 4 B = 20 GB,
  about 25 GB; so at most 2 rows of 16k tokens per GPU per micro-batch (raise
  grpo.grad_accum / sft.grad_accum when rows per step exceed it).
data=2, fsdp=4 doubles the sharded state (33 + 4 + 4 = 41 GB per GPU), leaving 39 GB: one
training row, and not both the KV cache and the weights' all-gather buffers. Across nodes,
data=-1 adds plain data parallelism over InfiniBand (fsdp all-gathers stay on NVLink). The
launch scripts let XLA take 92% of each card (XLA_PYTHON_CLIENT_MEM_FRACTION; JAX's
default 75% would leave 60 GB).
"""

import os

from atommem_jax import config_lib

DATA_DIR = "data/atommem"
DATASETS = ("hotpotqa", "2wikimultihopqa", "musique")
NUM_DOCS = 200  # documents per context (gold + distractors); the paper also evaluates 400, 800


def get_config():
  c = config_lib.base_config()
  # A placeholder: set --config.model.hf_dir to a Qwen3-8B Hugging Face directory.
  c.model.update(preset="qwen3-8b", hf_dir="/path/to/Qwen3-8B", param_dtype="float32",
                 dtype="bfloat16", rollout_dtype="bfloat16", remat="full")
  c.mesh.update(data=-1, fsdp=8, tensor=1)
  c.data.kind = "multihop"
  c.data.train_files = tuple(os.path.join(DATA_DIR, f"{name}_train_{NUM_DOCS}.jsonl")
                             for name in DATASETS)
  c.data.eval_files = tuple(os.path.join(DATA_DIR, f"{name}_dev_{NUM_DOCS}.jsonl")
                            for name in DATASETS)
  return c
