"""The synthetic tokenizer of a run: a BPE trained on its documents, questions and the
prompts and responses of a few oracle episodes."""

from __future__ import annotations

from typing import Mapping, Sequence

from atommem_jax.agent import env as env_lib
from atommem_jax.agent import oracle
from atommem_jax.data import multihop
from atommem_jax.data import tokenizer as tokenizer_lib

_CORPUS_EPISODES = 512  # oracle episodes whose prompts and responses join the BPE corpus


def _document_texts(contexts: Sequence[multihop.LongContext]) -> list[str]:
  texts = []
  for context in contexts:
    texts += [f"{doc.title}\n{doc.text}" for doc in context.documents]
    texts += [question.question for question in context.questions]
  return texts


def train_synthetic_tokenizer(contexts: Sequence[multihop.LongContext], vocab_size: int,
                              env_config: env_lib.EnvConfig, embedder, out_dir: str, *,
                              oracle_options: Mapping[str, bool] | None = None):
  """A BPE trained on documents, questions, and oracle prompts and responses; saved to out_dir.

  The prompts (system text, headers) only exist once a tokenizer chunks the context, so a
  first BPE on the documents drives a few oracle episodes whose texts join the corpus of
  the final one. `oracle_options`: keyword arguments of the `oracle.OraclePolicy` whose texts are used.
  """
  texts = _document_texts(contexts)
  draft = tokenizer_lib.train_bpe_tokenizer(texts, vocab_size)
  env = env_lib.MemoryEnv(env_config, draft, embedder)
  policy = oracle.OraclePolicy(enabled=env_config.enabled_actions, **(oracle_options or {}))
  results = oracle.run_episodes(env, policy, contexts[:_CORPUS_EPISODES])
  for result in results:
    for turn in result.trajectory:
      texts += [turn.prompt_text, turn.response]
  return tokenizer_lib.train_bpe_tokenizer(texts, vocab_size, out_dir)
