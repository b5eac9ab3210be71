"""bench/memory_writes.py: it scores the value and the restated prefix of each oracle memory
write, found independently here from the decoded response text."""

from __future__ import annotations

import os
import re
import sys

import numpy as np

from atommem_jax.agent import env as env_lib
from atommem_jax.data import synthetic
from atommem_jax.data.tokenizer import load_tokenizer
from atommem_jax.memory.embed import HashingEmbedder
from atommem_jax.train import sft_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))
import memory_writes  # pylint: disable=g-import-not-at-top,wrong-import-position


def _writes():
  contexts = synthetic.generate_synthetic(12, seed=3, num_entities=4, num_cities=3, num_docs=6,
                                          hops=1, num_updates=1, doc_length=4)
  tokenizer = load_tokenizer(os.path.join(REPO, "models", "tiny_base"))
  examples, _ = sft_data.oracle_examples(
      contexts, env_lib.EnvConfig(chunk_tokens=96, chunk_overlap=8), tokenizer,
      HashingEmbedder(256), oracle_options=dict(entry_label="question"))
  return examples, tokenizer, memory_writes.memory_writes(examples, tokenizer)


def test_writes_are_the_value_and_sentence_of_each_create_and_update():
  examples, tokenizer, writes = _writes()
  expected = []  # (kind, sentence without its value, value) from the decoded responses
  for example in examples:
    text = tokenizer.decode(example.response_ids)
    for kind, content in re.findall(r"<(add_memory|modify_memory)>(.*?)</\1>", text):
      sentence = content.split("? ", 1)[1].rstrip(".")
      head, value = sentence.rsplit(" ", 1)
      expected.append((kind, head, " " + value))
  assert {kind for kind, _, _ in expected} == {"add_memory", "modify_memory"}
  found = [(w.kind, tokenizer.decode([w.tokens[p] for p in w.prefix]).strip(),
            tokenizer.decode([w.tokens[w.value]])) for w in writes]
  assert found == expected
  for write in writes:  # positions inside the response, prefix right before the value
    assert list(write.prefix) == list(range(write.prefix[0], write.value))


def test_score_counts_the_argmax_hits_at_the_value_and_prefix_positions():
  _, _, writes = _writes()
  perfect = lambda tokens: np.append(tokens[1:], 0)  # the next token everywhere
  assert set(memory_writes.score(writes, perfect).values()) == {1.0}
  assert set(memory_writes.score(writes, lambda t: np.full_like(t, -1)).values()) == {0.0}
  values = {w.tokens: w.value for w in writes}
  def wrong_values(tokens):  # right everywhere but at the value
    predicted = perfect(tokens)
    predicted[values[tuple(int(t) for t in tokens)] - 1] = -1
    return predicted
  row = memory_writes.score(writes, wrong_values)
  assert row["add_memory value"] == row["add_memory both"] == 0.0
  assert row["add_memory prefix"] == row["modify_memory prefix"] == 1.0
