"""`make demo`: the embedded default (configs/tiny.py's task and model shape) started from the
pretrained base shipped in models/tiny_base, loaded through `load_hf` as a Qwen3-8B
checkpoint would be (model.hf_dir; its own tokenizer files win over config field tokenizer).

The base was pretrained by configs/pretrain_tiny.py then configs/pretrain_tiny_facts.py
(`make base`; models/tiny_base/README.md has the commands and its probe accuracies). On top
of it: SFT on oracle trajectories, GRPO, greedy evaluation on held-out synthetic contexts;
`python -m atommem_jax.demo` also trains the no-Update ablation (its own SFT with Update
disabled, in a second process). BENCHMARKS.md has the EM it reaches.
"""

import os

from atommem_jax import config_lib

BASE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models",
                        "tiny_base")


def get_config():
  c = config_lib.load_config_file("tiny", directory=os.path.dirname(__file__))
  c.model.hf_dir = BASE_DIR
  # Two SFT runs (the policy and the no-Update ablation, at once in two processes) and GRPO
  # share the run time on 2 cores: 1100 SFT steps of 12 examples each at lr 1e-3 (about 2.5
  # steps a second each with both running); each evaluation of 256 contexts takes 4-22 s.
  # EM after SFT on seeds 0-2: 800 steps 0.426 / 0.504 / 0.406, 1000 steps 0.520 / 0.520 /
  # 0.449, 1100 steps 0.535 / 0.543 / 0.512 (BENCHMARKS.md); 650 steps of 16 lost EM
  # (session 17).
  c.sft.update(steps=1100, lr=1e-3, batch_size=12)
  # One memory retrieved a query (tiny.py: 3). With one question an episode, a stale entry
  # beside its new version cost nothing when both were shown; retrieval by similarity does
  # not know which is newer, so with one shown, a policy that stores the new version as a
  # second entry instead of Updating the old one answers from the stale one about half the
  # time: the oracle without Update scores EM 0.470 on the updated questions (0.828 overall)
  # against 1.000 with it (seed 0's 256 held-out contexts).
  c.env.top_k = 1
  # The oracle's memories start with the question they answer ("Who is the friend of Bilu?
  # The friend of Bilu is Kora."), and the read prompt puts the questions after the chunk
  # (configs/demo_prompt.txt): the policy copies the question from just above its response,
  # so the relation asked is a few tokens before the sentence it must pick. On the phase-1
  # base, seed 0 after SFT: 0.281 with "Title:" entries and the questions first, 0.328 with
  # question labels, 0.438 with both; mean of seeds 0-2 0.214 -> 0.309 (BENCHMARKS.md).
  c.sft.oracle_entry_label = "question"
  # Every training episode whose first chunk lacks the fact starts from a wrong memory (a
  # decoy entry written at the first chunk, not taught), which the oracle Updates when the
  # fact appears. Without them the oracle's data never shows the state the policy makes for
  # itself (it writes at the first chunk whatever that chunk holds) nor a repair of it; seeds
  # 0-2 after SFT: 0.289 / 0.379 / 0.266 without, 0.410 / 0.414 / 0.297 with (0.305 on seed
  # 0 with half the episodes; BENCHMARKS.md).
  c.sft.oracle_decoy_share = 1.0
  # Its system message is empty: a fixed instruction line that a policy trained on this
  # format does not need was 18 of the ~150 tokens of every prompt. Without it, with the 6
  # GRPO steps and the checkpoint interval below, the demo at 800 SFT steps took 436-472 s
  # instead of 586-654 (BENCHMARKS.md), which paid for 200 more SFT steps.
  c.env.prompt_template = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                       "demo_prompt.txt")
  # GRPO: 6 steps of 4 questions x 16 rollouts. The same 64 rollouts as 8 x 8 but larger
  # groups: each episode's advantage is measured against 15 others of its question instead
  # of 7 (from session 20's SFT checkpoints, seeds 0-2: +0.125 / +0.055 / -0.016 against
  # -0.016 / +0.047 / +0.004 at 8 x 8). Still, a group whose 16 rollouts all score the same
  # has no advantage, and a step whose 4 groups all do (the first of seeds 1 and 2) teaches
  # nothing: with up to 4 draws a step (DAPO's dynamic sampling, a rollout of 64 episodes
  # costs about 1.5 s) the step trains on groups that differ first; from the 1100-step SFT
  # checkpoints +0.039 / +0.105 / -0.012 against +0.066 / +0.051 / -0.023 with one draw.
  # Each episode's loss is its tokens' mean, averaged over the episodes (verl's
  # seq-mean-token-mean), so that a long failed episode does not outweigh a short right one:
  # +0.051 / +0.109 / +0.008 against the token mean's numbers above. On seeds 3-5, which no
  # choice here looked at: +0.059 on average, against +0.078 with the token mean and +0.042
  # with one draw; over six seeds the two means tie (+0.057, +0.061) and dynamic sampling
  # beats one draw (+0.037). No KL term: at kl_coef 0.001 it changed no EM over 6 steps (the
  # same 3 decimals on every seed) and cost the reference policy's forward pass in every
  # update.
  c.grpo.update(steps=6, questions_per_batch=4, group_size=16, max_draws=4,
                kl_estimator="none", aggregation="seq-mean-token-mean")
  # Rollouts at temperature 0.5 (evaluation is greedy): at 1.0 the sampled policy is right far
  # less often than the greedy one (reward 0.08-0.17 a step against EM 0.27 on seed 0), and
  # GRPO learnt what pays for a sampling policy (a second Create at the next chunk, so that
  # one of two memories holds the answer), which a greedy answer step undoes by taking the
  # newer one. EM after GRPO from the same SFT checkpoints (session 17: 16 examples an SFT
  # step, top_k 3), seeds 0 / 1 / 2: 0.277 / 0.320 / 0.301 at 1.0, 0.262 / 0.461 / 0.383 at
  # 0.5, 0.297 / 0.410 / 0.355 at 0.3 (after SFT 0.273 / 0.406 / 0.383-0.398; BENCHMARKS.md).
  c.rollout.temperature = 0.5
  # A checkpoint every 550 steps of either stage (tiny.py: 50; each costs about a second).
  c.checkpoint.every_steps = 550
  return c
