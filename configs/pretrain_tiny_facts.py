"""The second phase of the tiny default's base (issue 19): configs/pretrain_tiny.py's base
(key-value recall only) trained further on recall and restated facts, half each. A facts row
is a synthetic context's documents, then 8 of their profile sentences restated up to the
object (" ? Kozi was born in Rupe"), loss on the object: the lookup the agent makes when it
copies a fact into memory, keyed by the subject and the relation together, which recall alone
(one key) does not teach. The restating probe (the same rows over 256 held-out contexts) is
logged beside the lookup probe. Start it from phase 1's export:

  python -m atommem_jax.train --config configs/pretrain_tiny_facts.py --workdir WORKDIR \\
      --config.model.hf_dir=PHASE1_WORKDIR/hf

`make base` runs both phases and exports this one over models/tiny_base.
"""

import os

from atommem_jax import config_lib


def get_config():
  c = config_lib.load_config_file("pretrain_tiny", directory=os.path.dirname(__file__))
  # 64 rows a step of up to 320 tokens (a context's documents are about 180 of them), at a
  # constant lr, so that a run resumed with more steps continues the same schedule. From the
  # phase-1 base the restating probe went 0.02 -> 0.46 / 0.69 / 0.83 / 0.92 / 0.93 at steps
  # 50 / 150 / 400 / 600 / 800 (1.1-1.3 s a step on 2 cores), the lookup probe staying at
  # 0.999-1.000; step 800 is the shipped base (on the demo's recipe of session 22, SFT from
  # step 400 scored 0.432 on seeds 0-5 against 0.515 from step 800: BENCHMARKS.md).
  c.pretrain.update(steps=800, tasks="recall:1,facts:1", batch_size=64, max_len=320,
                    recall_curriculum_steps=0, probe_every_steps=50, checkpoint_every_steps=50)
  return c
