"""Greedy evaluation of a policy on long contexts: one function for the train loop and the CLI.

`evaluation_loop` builds the episode loop both use (greedy sampling, the eval section's batch
size, the rollout section's prompt buckets); `evaluate` runs every context through it in
batches and summarises the episodes of every process. One seeding rule: the batch that
starts at context i runs with key fold_in(key(seed), i). One summary layout (`summarize`),
the row of evaluations.json, the eval/NAME/* metrics and a dataset of the CLI's summary.json.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable, Sequence

import jax
import numpy as np
import tqdm

from atommem_jax import config_lib
from atommem_jax.agent import oracle
from atommem_jax.agent import reward as reward_lib
from atommem_jax.agent import stats as stats_lib
from atommem_jax.data.multihop import LongContext
from atommem_jax.rollout import episode as episode_lib
from atommem_jax.rollout import host as host_lib
from atommem_jax.train import distributed


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """What `evaluate` returns.

  Attributes:
    summary: the `summarize` layout, over every process's episodes.
    episodes: this process's (context, episode) pairs in context order (all of them on one
      host), with observations when the loop traces (the CLI's episode log).
  """
  summary: dict[str, Any]
  episodes: list[tuple[LongContext, host_lib.EpisodeRollout]]


def evaluation_loop(config, model_config, tokenizer, env_config, embedder, mesh, *,
                    make_policy: Callable[[], oracle.Policy] | None = None,
                    trace: bool = False) -> episode_lib.EpisodeLoop:
  """The greedy episode loop of an evaluation (`config`: the experiment config).

  A scripted policy (`make_policy`) writes long responses; its response cap is the env's
  `max_response_chars`, which cuts them there anyway.
  """
  sampling = config_lib.sampling_config(config, eos_ids=host_lib.eos_token_ids(tokenizer),
                                        pad_id=tokenizer.pad_token_id, greedy=True)
  if make_policy is not None:
    sampling = dataclasses.replace(sampling, max_new_tokens=env_config.max_response_chars)
  return episode_lib.EpisodeLoop(
      model_config, tokenizer, env_config, embedder, batch_size=config.eval.batch_size,
      prompt_buckets=tuple(config.rollout.prompt_buckets), sampling=sampling, mesh=mesh,
      make_policy=make_policy, trace=trace)


def answer_recall(context, rollout) -> tuple[list[float], list[float]]:
  """Per question: is a gold answer in the final store; was it among the memories that the
  question's answer steps retrieved (an empty list without traced observations)."""
  in_store = [reward_lib.answer_in_texts(q.answers, [m.text for m in rollout.result.memories])
              for q in context.questions]
  retrieved = [reward_lib.answer_in_texts(q.answers, [
      m.text for o in rollout.observations if o.phase == "answer" and o.question_index == i
      for m in o.retrieved]) for i, q in enumerate(context.questions)]
  return in_store, retrieved if rollout.observations else []


def updated_exact_match(context, rollout) -> list[float]:
  """EM of each question whose answer changed in the context (a fact on its evidence chain
  was superseded by a later document: the synthetic task's updates), in question order; the
  questions without evidence (real benchmarks) or without an update are left out."""
  return [float(em) for evidence, em in zip(context.evidence, rollout.result.exact_match)
          if evidence.superseded]


def summarize(contexts: Sequence[LongContext], results, in_store: Sequence[float],
              retrieved: Sequence[float], seconds: float,
              updated: Sequence[float] = ()) -> dict[str, Any]:
  """One evaluation's row: sizes, answer quality, answer recall and operation usage.

  `results` are the episodes' `EpisodeResult`s; `in_store` / `retrieved` the per-question
  flags of `answer_recall`. answer_in_store: share of questions whose gold answer occurs in
  the final store; answer_retrieved: share whose gold answer was among the memories their
  answer steps read (None when the loop did not trace). Both are upper bounds (a memory
  about something else that names the answer also counts): EM far below them means the
  policy did not give an answer it could have read; EM near them means what it failed at
  was storing or finding it. exact_match_updated: EM over the questions whose answer was
  updated in the context (`updated`, from `updated_exact_match`; None when there are none),
  updated_questions their number. The operation fields are `agent.stats.summarize`'s, per
  episode.
  """
  exact_match = [em for r in results for em in r.exact_match]
  return {
      "contexts": len(contexts),
      "episodes": len(results),
      "questions": len(exact_match),
      "documents_per_context": float(np.mean([len(c.documents) for c in contexts])),
      "exact_match": float(np.mean(exact_match)),
      "f1": float(np.mean([f for r in results for f in r.f1])),
      "reward": float(np.mean([r.reward for r in results])),
      "answer_in_store": float(np.mean(in_store)),
      "answer_retrieved": float(np.mean(retrieved)) if retrieved else None,
      "exact_match_updated": float(np.mean(updated)) if len(updated) else None,
      "updated_questions": len(updated),
      **stats_lib.summarize([r.stats for r in results]),
      "seconds": seconds,
  }


def evaluate(loop: episode_lib.EpisodeLoop, params, contexts: Sequence[LongContext], *,
             seed: int, progress: str | None = None) -> Evaluation:
  """Greedy episodes of every context, `loop.batch_size` at a time, summarised.

  Every process passes the same arguments; the summary covers every process's episodes.
  `params` (None for a scripted policy) are cast to the loop's rollout dtype. `progress`
  names a progress bar (shown on process 0 when there is more than one batch).
  """
  if params is not None:
    dtype = loop.model_config.jnp_param_dtype
    params = jax.tree.map(lambda x: x.astype(dtype), params)
  episodes, results, in_store, retrieved, updated, seconds = [], [], [], [], [], 0.0
  starts = range(0, len(contexts), loop.batch_size)
  for start in tqdm.tqdm(starts, desc=progress, unit="batch", file=sys.stderr,
                         disable=progress is None or len(starts) < 2
                         or jax.process_index() != 0):
    batch = contexts[start:start + loop.batch_size]
    rollout = loop.run(params, batch, jax.random.fold_in(jax.random.key(seed), start))
    local = [(batch[e.episode], e) for e in rollout.episodes]
    episodes += local
    results += [outcome.result for outcome in distributed.gather_outcomes(rollout.episodes)]
    for part in distributed.allgather_objects([(*answer_recall(c, e), updated_exact_match(c, e))
                                               for c, e in local]):
      for store_flags, retrieved_flags, updated_em in part:
        in_store += store_flags
        retrieved += retrieved_flags
        updated += updated_em
    seconds += rollout.seconds
  return Evaluation(summarize(contexts, results, in_store, retrieved, seconds, updated),
                    episodes)
