r"""The paper's run: Qwen3-8B, SFT then GRPO, on one node of 8 x A800 80GB (N nodes: HSDP).

  python -m atommem_jax.train --config configs/qwen3_8b_a800.py --workdir runs/a800 \
      --config.model.hf_dir=/models/Qwen3-8B \
      --config.embedder=qwen3-embedding:/models/Qwen3-Embedding-0.6B
  sbatch --nodes=N launch/gpu_slurm.sh ...  (several nodes; see launch/README.md)

Hyperparameters are the paper's (configs/base.py). Data: long contexts built from the
benchmarks' own files by `python -m atommem_jax.data.build`, one file per dataset and split,
at the default paths below (DATA_DIR, relative to the working directory), e.g.

  python -m atommem_jax.data.build --dataset hotpotqa --input hotpot_train_v1.1.json \
      --num_docs 200 --seed 0 --out data/atommem/hotpotqa_train_200.jsonl

and the dev splits of hotpotqa, 2wikimultihopqa and musique (GRPO trains on HotpotQA only,
as the official run). Elsewhere:
--config.data.train_files='("a.jsonl", "b.jsonl")' (and data.eval_files).

Memory per GPU, from `python -m atommem_jax.aot --config configs/qwen3_8b_a800.py --topology
cpu-8`: it compiles every program for 8 host devices (so every sharding is legal) and prints
an analytic per-GPU estimate (its formula is checked against XLA:TPU's figures in
tests/test_aot.py) against 80 GiB x 0.92 = 73.6 GiB, the share of each card the launch
scripts give XLA (XLA_PYTHON_CLIENT_MEM_FRACTION). fsdp=8 shards the fp32 weights, Adam
moments and reference (Qwen3-8B, 8.19e9 parameters) to 11.4 + 3.8 GiB per GPU. GiB per GPU
at the base config's sizes (estimate, blockwise/cuDNN attention, loss_chunk 1024), and what
XLA:TPU says for the same programs on a v5p-16 (8 chips, the same mesh; configs/qwen3_8b_tpu.py):
  program       shape per GPU                                     estimate  XLA:TPU
  sft_step      2 rows x 18432 tokens (sft.batch_size 16 / 8)        37.5     45.8
  grpo_step     1 row x 20480 tokens a micro-batch, accumulated       36.1     47.8
  old_logprobs  the same rows, forward only                           19.2     19.8
  sampler       8 episodes x (16384 prompt + 4096 new)                56.4     65.2
  episode_loop  the jitted loop around the sampler                    56.4     68.7
The estimate reads 0.76-0.97 of XLA:TPU's figures at 8B (it leaves out part of the gradient
accumulation's and the loop's temporaries), so take the larger column: every program stays
under 73.6. So sft.grad_accum stays 1, the whole GRPO batch rolls out at once (8 questions x
8 rollouts over 8 GPUs), and GRPO trains one 20480-token row per GPU per pass
(grpo.micro_batch_rows 1): a GRPO batch holds every turn of its episodes as a row, so the
number of passes follows the batch. A second row per pass adds one row's activations
(~12 GiB by the estimate): run the command before raising it.
data=2, fsdp=4 doubles the sharded state per GPU. Across nodes, data=-1 adds plain data
parallelism over InfiniBand (fsdp all-gathers stay on NVLink).
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
  # One 20480-token GRPO row per GPU per forward and backward pass (what fits: docstring).
  c.grpo.micro_batch_rows = 1
  # A placeholder: the paper's embedder, a local download of Qwen/Qwen3-Embedding-0.6B, run by
  # our Flax Qwen3 (memory/qwen3_embed.py; '?device=accelerator' puts it on a GPU, unmeasured).
  c.embedder = "qwen3-embedding:/path/to/Qwen3-Embedding-0.6B"
  c.data.kind = "multihop"
  # RL contexts from HotpotQA's training split only, as the official run; evaluation on the
  # three dev sets.
  c.data.train_files = (os.path.join(DATA_DIR, f"hotpotqa_train_{NUM_DOCS}.jsonl"),)
  c.data.eval_files = tuple(os.path.join(DATA_DIR, f"{name}_dev_{NUM_DOCS}.jsonl")
                            for name in DATASETS)
  return c
