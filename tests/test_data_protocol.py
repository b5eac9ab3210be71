"""The official data protocol (atommem_jax.data.protocol) over the shipped slices: grouping,
middle cut, presets."""

from __future__ import annotations

import collections
import os
import subprocess
import sys

import pytest

from atommem_jax.data import build
from atommem_jax.data import multihop
from atommem_jax.data import protocol
import _paths

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", params=sorted(_paths.SLICES))
def split(request):
  return multihop.read_dataset(request.param, str(_paths.SLICES[request.param]))


def test_group_sizes_follow_the_official_distribution():
  sizes = protocol.group_sizes(40_000, seed=3)
  assert sum(sizes) == 40_000 and min(sizes) == 1 and max(sizes) == 10
  counts = collections.Counter(sizes[:-1])  # the last one is cut to fit
  groups = len(sizes) - 1
  assert abs(counts[1] / groups - 0.5) < 0.015
  for size in range(2, 11):
    assert abs(counts[size] / groups - 0.5 / 9) < 0.01
  assert protocol.group_sizes(40_000, seed=3) == sizes
  assert protocol.group_sizes(40_000, seed=4) != sizes
  assert set(protocol.group_sizes(500, seed=0, max_questions=3)) <= {1, 2, 3}
  assert protocol.group_sizes(0, seed=0) == []


def test_every_question_brings_all_its_paragraphs(split):
  contexts = list(protocol.iter_contexts(split, num_docs=200, seed=42))
  pool = {d for sample in split for d in sample.documents}
  by_id = {sample.id: sample for sample in split}
  assert [q.id for c in contexts for q in c.questions] == [s.id for s in split]
  for context in contexts:
    samples = [by_id[q.id] for q in context.questions]
    own = {d for sample in samples for d in sample.documents}
    assert own <= set(context.documents)  # every paragraph, distractors included
    assert len(set(context.documents)) == len(context.documents)  # no repeats
    assert set(context.documents) <= pool
    assert len(context.documents) == max(min(200, len(pool)), len(own))
    for sample, gold in zip(samples, context.gold_indices, strict=True):
      assert [context.documents[i] for i in gold] == sorted(
          (sample.documents[i] for i in sample.gold_indices), key=context.documents.index)
  sizes = collections.Counter(len(c.questions) for c in contexts)
  assert set(sizes) <= set(range(1, 11)) and sizes[1] > 0 and len(sizes) > 2


def test_contexts_are_deterministic_by_seed(split):
  first = list(protocol.iter_contexts(split, num_docs=60, seed=7))
  assert list(protocol.iter_contexts(split, num_docs=60, seed=7)) == first
  other = list(protocol.iter_contexts(split, num_docs=60, seed=8))
  assert other != first
  # A context depends only on its questions and the pool: a part of the split, built with the
  # whole split as its pool, gives the same context for the same group.
  group = first[1]
  start = [q.id for c in first for q in c.questions].index(group.questions[0].id)
  part = split[start:start + len(group.questions)]
  rebuilt = protocol._context(part, _own(part, split), *_pool(split), 60, 7)
  assert rebuilt == group


def _pool(samples):
  documents = tuple(sorted({d for s in samples for d in s.documents},
                           key=lambda d: (d.title, d.text)))
  return documents, {d: i for i, d in enumerate(documents)}


def _own(part, samples):
  _, index = _pool(samples)
  return list(dict.fromkeys(index[d] for s in part for d in s.documents))


def test_small_num_docs_keeps_every_paragraph_and_caps_contexts():
  samples = multihop.read_dataset("musique", str(_paths.MUSIQUE))
  contexts = list(protocol.iter_contexts(samples, num_docs=30, seed=0, max_contexts=5))
  assert len(contexts) == 5
  by_id = {sample.id: sample for sample in samples}
  for context in contexts:
    own = {d for q in context.questions for d in by_id[q.id].documents}
    assert own <= set(context.documents)
    assert len(context.documents) == max(30, len(own))
  assert any(len(c.questions) > 1 for c in contexts)  # some hold more paragraphs than 30


def _words(text: str) -> int:
  return len(text.split())


def test_middle_cut_keeps_head_and_tail_within_the_budget():
  samples = multihop.read_dataset("hotpotqa", str(_paths.HOTPOTQA))
  context = next(protocol.iter_contexts(samples, num_docs=100, seed=1))
  total = _words(multihop.render_context(context.documents))
  cut = protocol.truncate_middle(context, _words, total // 3)
  assert _words(multihop.render_context(cut.documents)) <= total // 3
  n = len(cut.documents)
  head = next(k for k in range(n + 1)
              if k == n or cut.documents[k] != context.documents[k])
  tail = n - head
  assert cut.documents[:head] == context.documents[:head]
  assert cut.documents[head:] == context.documents[len(context.documents) - tail:]
  assert head > 0 and tail > 0 and n < len(context.documents)
  # The head is the longest prefix within half the budget (blocks counted with their header
  # and the blank line after them).
  blocks = [_words(f"Document {i}:\n{d.title}\n{d.text}") + 1
            for i, d in enumerate(context.documents, start=1)]
  assert sum(blocks[:head]) <= total // 6 < sum(blocks[:head + 1])
  for old_gold, new_gold in zip(context.gold_indices, cut.gold_indices):
    kept = [context.documents[i] for i in old_gold if context.documents[i] in cut.documents]
    assert [cut.documents[i] for i in new_gold] == kept
  assert protocol.truncate_middle(context, _words, total) == context
  # Within the budget by the documents' own counts: the whole text is never tokenized.
  counted = []
  bound = sum(blocks) - 1
  assert protocol.truncate_middle(context, lambda text: counted.append(text) or _words(text),
                                  bound) == context
  assert multihop.render_context(context.documents) not in counted and len(counted) == len(blocks)


def _run_cli(*args):
  env = {**os.environ, "PYTHONPATH": REPO}
  return subprocess.run([sys.executable, "-m", "atommem_jax.data.build", *args], env=env,
                        capture_output=True, text=True, timeout=120, check=False)


def test_cli_preset_and_middle_cut_with_the_qwen3_tokenizer(tmp_path, capsys):
  tokenizer_lib = pytest.importorskip("atommem_jax.data.tokenizer")
  try:
    tokenizer = tokenizer_lib.load_tokenizer()
  except FileNotFoundError as e:
    pytest.skip(f"the Qwen3 tokenizer is an optional asset: {e}")
  out = str(tmp_path / "musique.jsonl")
  code = build.main(["--preset", "musique_dev", "--input", str(_paths.MUSIQUE),
                      "--num_docs", "60", "--max_contexts", "4", "--max_context_tokens", "6000",
                      "--out", out])
  assert code == 0, capsys.readouterr().err
  contexts = multihop.load_long_contexts(out)
  assert len(contexts) == 4
  assert "wrote 4 contexts" in capsys.readouterr().out
  for context in contexts:
    text = multihop.render_context(context.documents)
    assert len(tokenizer.encode(text, add_special_tokens=False)) <= 6000
  samples = multihop.read_musique(str(_paths.MUSIQUE))
  full = list(protocol.iter_contexts(samples, 60, protocol.SEED, max_contexts=4))
  assert any(len(c.documents) < len(f.documents) for c, f in zip(contexts, full))
  assert all(c.questions == f.questions for c, f in zip(contexts, full))


def test_cli_names_the_file_of_invalid_utf8(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_bytes(b'\n{"_id": "\xff"}\n')
  result = _run_cli("--dataset", "hotpotqa", "--input", str(bad), "--num_docs", "5",
                    "--out", str(tmp_path / "o.jsonl"))
  assert result.returncode == 2
  assert "bad.jsonl:" in result.stderr and "not valid UTF-8" in result.stderr
  assert "Traceback" not in result.stderr
