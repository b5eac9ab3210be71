"""Pretrains the tiny default's base model from random init on tasks generated from the synthetic
world (issue 19): key-value recall in the synthetic names (" Zale is Beri . ... ? Zale is
Beri .") with a curriculum from 4 to 16 facts; no SFT, no GRPO, no agent evaluation. (The
stage also has repeat-the-text, documents and questions-over-documents tasks:
pretrain.tasks.) The 16-fact lookup probe's accuracy is logged every pretrain.probe_every_steps
steps, and the base is written in Hugging Face format (config.json, safetensors, tokenizer
files) to WORKDIR/hf, the directory a later run loads with --config.model.hf_dir:

  python -m atommem_jax.train --config configs/pretrain_tiny.py --workdir WORKDIR

Model, tokenizer and data are configs/tiny.py's; rerunning the command resumes.
"""

import os

from atommem_jax import config_lib


def get_config():
  c = config_lib.load_config_file("tiny", directory=os.path.dirname(__file__))
  c.sft.steps = 0
  c.grpo.steps = 0
  c.eval.num_contexts = 0  # no agent evaluation: no held-out contexts are generated either
  c.data.synthetic.eval_contexts = 0
  # Key-value recall only: mixed with repeat-the-text and questions over documents (recall 3,
  # copy 1, qa 1) the copy rows' 128 targets each outweighed the recall rows' 4-16 in the
  # token-mean loss, and the probe stayed at chance (0.004 at steps 100 and 200; BENCHMARKS.md).
  # A constant lr, so that a run resumed with more steps continues the same schedule.
  c.pretrain.update(steps=3000, tasks="recall:1", recall_facts_start=4,
                    recall_curriculum_steps=300, checkpoint_every_steps=100,
                    eval_every_steps=None)
  return c
