"""The embedded default: a tiny Qwen3 on the synthetic task, end to end on a 2-core CPU.

It trains from random init (SFT on oracle trajectories, then GRPO) in about 10 minutes on a
2-core CPU (BENCHMARKS.md has the EM it reaches); `make demo` runs configs/demo.py, this task
and shape started from the pretrained base in models/tiny_base instead. The prompt template is a
compact one (configs/tiny_prompt.txt) so that a step's prompt stays near 200 tokens of the
synthetic BPE.
"""

import os

from atommem_jax import config_lib


def get_config():
  c = config_lib.base_config()
  # Data parallel over the 2 cores of the CPU this default is sized for (1.5x the SFT steps
  # per second of one device; an XLA_FLAGS that sets the host device count wins).
  c.mesh.cpu_devices = 2
  # The "tiny" preset (atommem_jax.model.config): a 2048-entry vocabulary makes every
  # synthetic name one token, with or without a space.
  c.model.update(preset="tiny", param_dtype="float32", dtype="float32", rollout_dtype="float32",
                 remat="none")
  c.tokenizer = "synthetic"
  c.embedder = "hashing:256"
  c.env.update(chunk_tokens=96, chunk_overlap=8, max_chunks=8, top_k=3, max_retrieved_tokens=96,
               max_queries_per_question=1, max_steps=12, max_response_chars=400,
               max_content_chars=200, store_backend="exact",
               prompt_template=os.path.join(os.path.dirname(__file__), "tiny_prompt.txt"))
  c.data.kind = "synthetic"
  c.data.synthetic.update(train_contexts=4096, eval_contexts=256, num_entities=4, num_cities=3,
                          num_docs=6, hops=1, num_updates=1, doc_length=4)
  c.rollout.update(prompt_buckets=(192, 256), max_new_tokens=40, top_p=1.0)
  # SFT with the prompts' language-modelling loss (weight 1.0: every prompt token counts as
  # much as a response token) and a cosine decay: from random init the policy has never read
  # text, and the prompts' repeated names are where it learns to copy from its context.
  # One repeat-the-text example per training context is mixed in (a span of its documents
  # to copy back: every target there needs a copy from the context), and the oracle writes
  # its answers "\\boxed{ Name}", so that the answer is the same BPE token as " Name" in the
  # memory it reads. With both, SFT beats random init on seeds 0, 1 and 2 (EM 0.062-0.074
  # against 0.000), not on seed 3 (BENCHMARKS.md). 900 steps take about 400 s on 2 cores and
  # the demo about 530 s; at 1000 steps (about 600 s) seed 3 learnt and seed 2 did not.
  c.sft.update(steps=900, batch_size=16, max_len=512, lr=5e-3, warmup_steps=20, packing=True,
               prompt_loss_weight=1.0, schedule="cosine", weight_decay=0.01,
               copy_examples_per_context=1, oracle_boxed_space=True)
  # GRPO at lr 5e-5: at 2e-4 its 20 steps cut the store recall of a seed-0 SFT policy from
  # 0.109 to 0.062 (invalid Updates rose from 0.13 to 0.4-0.6 an episode) for no EM.
  # micro_batch_rows 16: a GRPO batch (a row per turn; 384 rows after padding at the demo's
  # 8 x 8 rollouts) goes through the update in micro-batches of 16 rows a device: the same
  # loss (token-mean over the whole batch) in half the time on 2 cores (about 7 s an update
  # against 14 s in one pass; the working set then fits the caches).
  c.grpo.update(steps=20, questions_per_batch=4, group_size=4, lr=5e-5, warmup_steps=2,
                micro_batch_rows=16)
  c.eval.update(num_contexts=256, batch_size=32)  # 256: EM within about +-0.02
  c.checkpoint.update(every_steps=50, max_to_keep=2)
  # Both stages checkpoint and evaluate at the checkpoint / eval sections' intervals (the
  # --config.checkpoint.every_steps flag reaches them), not at the paper's per-stage ones.
  for stage in (c.sft, c.grpo):
    stage.update(checkpoint_every_steps=None, eval_every_steps=None)
  return c
