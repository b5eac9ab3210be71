"""Pretrains the tiny default's base model from random init on tasks generated from the synthetic
world (issue 19): key-value recall in the synthetic names (" Zale is Beri . ... ? Zale is
Beri .", half the rows " Zale Beri . ... ? Zale Beri .") with a curriculum from 4 to 16 facts
over 600 steps; no SFT, no GRPO, no agent evaluation. (The
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
  # Half the recall rows without " is" (pretrain.recall_plain_share=0.5, the default): there
  # the lookup is the plain induction step, which forms in about 200 steps and carries over
  # to the " is" rows; with " is" in every row the probe stalled near 0.2 (BENCHMARKS.md).
  # A constant lr, so that a run resumed with more steps continues the same schedule.
  c.pretrain.update(steps=600, tasks="recall:1", recall_facts_start=4,
                    recall_curriculum_steps=600, checkpoint_every_steps=100,
                    eval_every_steps=None)
  return c
