"""Multi-hop QA (HotpotQA, 2WikiMultihopQA, MuSiQue) -> long contexts for the memory agent.

One JSON row becomes a `QASample` (its question, its paragraphs, which of them support the
answer); the readers reject invalid UTF-8, rows without paragraphs and repeated ids, naming the
file and line. `build_long_contexts` builds the older gold-only layout: the supporting
documents of one or more questions plus distractors drawn from all unique documents of the
split, shuffled with a seed (the official protocol is `atommem_jax.data.protocol`).
`save_long_contexts`/`load_long_contexts` store contexts as JSON lines (or Parquet through
the `datasets` library); loading checks every row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from atommem_jax import fileio

_LOG = logging.getLogger(__name__)


class DataError(ValueError):
  """A data file that cannot be read; the message names the file, row and field."""


@dataclasses.dataclass(frozen=True)
class Document:
  title: str
  text: str


@dataclasses.dataclass(frozen=True)
class Question:
  id: str
  question: str
  answers: tuple[str, ...]  # gold answer first, then aliases


@dataclasses.dataclass(frozen=True)
class QASample:
  """One benchmark row: a question with its own paragraphs (duplicates removed)."""

  id: str
  dataset: str
  question: Question
  documents: tuple[Document, ...]
  gold_titles: tuple[str, ...]  # titles of the supporting documents
  # Indices into `documents` of the supporting ones. Titles alone are ambiguous: MuSiQue
  # often has several paragraphs with one title, only one of them supporting.
  gold_indices: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Fact:
  doc_index: int  # into LongContext.documents
  text: str  # the sentence as written in that document


@dataclasses.dataclass(frozen=True)
class Supersession:
  old: Fact
  new: Fact  # a later document's statement that replaces `old`


@dataclasses.dataclass(frozen=True)
class Evidence:
  """Structured ground truth of one question (synthetic data, for the oracle teacher)."""

  chain: tuple[Fact, ...]  # one fact per hop, latest versions, in the order followed
  superseded: tuple[Supersession, ...]  # earlier versions of chain facts, oldest first


@dataclasses.dataclass(frozen=True)
class LongContext:
  """Documents read in order by the agent, and the questions asked about them."""

  id: str
  dataset: str
  questions: tuple[Question, ...]
  documents: tuple[Document, ...]
  gold_indices: tuple[tuple[int, ...], ...]  # per question, its supporting documents
  seed: int
  num_docs: int  # requested size; fewer documents when the split has fewer
  evidence: tuple[Evidence, ...] = ()  # per question; empty for real benchmarks


# --- Readers ------------------------------------------------------------------------------


def read_hotpotqa(path: str) -> list[QASample]:
  """Reads HotpotQA (a JSON array as released, or JSON lines)."""
  # Sentences carry their own leading spaces: concatenating restores the paragraph.
  return _unique_ids([(where, _read_titled_row(row, where, "hotpotqa", separator=""))
                      for where, row in _records(path)])


def read_2wiki(path: str) -> list[QASample]:
  """Reads 2WikiMultihopQA (same layout as HotpotQA).

  Sentences carry no leading spaces, so they are joined with one. Rows without a
  `context` field are skipped with a warning: some circulating dev copies (36 rows of the
  200-row MIGRES copy) carry `qa_pairs`/`explanation` instead of paragraphs.
  """
  samples, skipped = [], []
  for where, row in _records(path):
    if isinstance(row, dict) and "context" not in row:
      skipped.append(where)
      continue
    samples.append((where, _read_titled_row(row, where, "2wiki", separator=" ")))
  if skipped:
    _LOG.warning("%s: skipped %d rows without a 'context' field (first: %s)", path,
                 len(skipped), skipped[0])
  return _unique_ids(samples)


def read_musique(path: str) -> list[QASample]:
  """Reads MuSiQue (JSON lines); unanswerable rows (`answerable: false`) are skipped."""
  samples, skipped = [], 0
  for where, row in _records(path):
    _require_object(row, where)
    if row.get("answerable", True) is False:
      skipped += 1
      continue
    paragraphs = _nonempty(_field(row, "paragraphs", list, where), "paragraphs", where)
    documents, gold = [], []
    for i, paragraph in enumerate(paragraphs):
      item = f"paragraphs[{i}]"
      _require_object(paragraph, where, item)
      documents.append(Document(_field(paragraph, "title", str, where, item),
                                _field(paragraph, "paragraph_text", str, where, item)))
      gold.append(_field(paragraph, "is_supporting", bool, where, item))
    question = _question(row, "id", where)
    samples.append((where, _sample(question, "musique", documents, gold)))
  if skipped:
    _LOG.warning("%s: skipped %d unanswerable rows", path, skipped)
  return _unique_ids(samples)


_READERS: dict[str, Callable[[str], list[QASample]]] = {
    "hotpotqa": read_hotpotqa,
    "2wiki": read_2wiki,
    "2wikimultihopqa": read_2wiki,
    "musique": read_musique,
}
DATASETS = tuple(_READERS)


def read_dataset(name: str, path: str) -> list[QASample]:
  """Reads a split of the benchmark `name` (one of DATASETS)."""
  if name not in _READERS:
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
  return _READERS[name](path)


def _records(path: str) -> Iterator[tuple[str, Any]]:
  """Yields (location, row): `path:line` for JSON lines, `path[index]` for a JSON array."""
  with open(path, "rb") as f:
    head = f.read(4096).lstrip()
    f.seek(0)
    if head.startswith(b"["):
      data = f.read()
      try:
        rows = json.loads(data.decode("utf-8"))
      except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: {_utf8_problem(e, 'of the file')}") from e
      except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from e
      for index, row in enumerate(rows):
        yield f"{path}[{index}]", row
      return
    for line_number, raw in enumerate(f, start=1):
      where = f"{path}:{line_number}"
      row = parse_json_line(raw, where)
      if row is not BLANK:
        yield where, row


BLANK = object()  # what parse_json_line returns for a blank line


def parse_json_line(raw: bytes, where: str) -> Any:
  """One JSON-lines row from its bytes (`BLANK` for a blank line); errors name `where`."""
  try:
    line = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(f"{where}: {_utf8_problem(e, 'of the line')}") from e
  if not line.strip():
    return BLANK
  try:
    return json.loads(line)
  except json.JSONDecodeError as e:
    raise DataError(f"{where}: not valid JSON ({e.msg}, column {e.colno}); each line "
                    "must hold one JSON object") from e


def _utf8_problem(error: UnicodeDecodeError, of: str) -> str:
  return (f"not valid UTF-8 (byte 0x{error.object[error.start]:02x} at byte {error.start} "
          f"{of}); save the file as UTF-8")


def _unique_ids(located: Sequence[tuple[str, QASample]]) -> list[QASample]:
  """The samples, after checking that no question id repeats (a repeat is a broken split)."""
  first_seen: dict[str, str] = {}
  for where, sample in located:
    if sample.id in first_seen:
      raise DataError(f"{where}: question id {sample.id!r} repeats the row at "
                      f"{first_seen[sample.id]}; ids must be unique in a split")
    first_seen[sample.id] = where
  return [sample for _, sample in located]


def _nonempty(values: list[Any], key: str, where: str) -> list[Any]:
  if not values:
    raise DataError(f"{where}: field {key!r} is empty; a question needs its paragraphs")
  return values


def _read_titled_row(row: Any, where: str, dataset: str, separator: str) -> QASample:
  """HotpotQA/2Wiki layout: `context` [[title, [sentences]]], `supporting_facts`."""
  _require_object(row, where)
  documents = []
  for i, item in enumerate(_nonempty(_field(row, "context", list, where), "context", where)):
    if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
            and isinstance(item[1], list) and all(isinstance(s, str) for s in item[1])):
      raise DataError(f"{where}: field 'context[{i}]' should be [title, [sentence, ...]], "
                      f"got {_preview(item)}")
    documents.append(Document(item[0], separator.join(item[1])))
  titles = {document.title for document in documents}
  supporting = []
  for i, fact in enumerate(_field(row, "supporting_facts", list, where)):
    if not (isinstance(fact, list) and len(fact) == 2 and isinstance(fact[0], str)):
      raise DataError(f"{where}: field 'supporting_facts[{i}]' should be [title, "
                      f"sentence_index], got {_preview(fact)}")
    if fact[0] not in titles:
      raise DataError(f"{where}: field 'supporting_facts[{i}]' names title {fact[0]!r}, "
                      "which is not in 'context'")
    supporting.append(fact[0])
  gold = [document.title in supporting for document in documents]
  return _sample(_question(row, "_id", where), dataset, documents, gold)


def _question(row: dict[str, Any], id_key: str, where: str) -> Question:
  if id_key not in row and "id" in row:
    id_key = "id"
  answers = [_field(row, "answer", str, where)]
  aliases = row.get("answer_aliases", [])
  if not (isinstance(aliases, list) and all(isinstance(a, str) for a in aliases)):
    raise DataError(f"{where}: field 'answer_aliases' should be a list of strings, got "
                    f"{_preview(aliases)}")
  return Question(_field(row, id_key, str, where), _field(row, "question", str, where),
                  tuple(dict.fromkeys(answers + aliases)))


def _sample(question: Question, dataset: str, documents: Sequence[Document],
            gold: Sequence[bool]) -> QASample:
  """Builds a sample, dropping repeated documents (a repeat is gold if any copy is)."""
  index_of: dict[Document, int] = {}
  gold_indices = set()
  for document, is_gold in zip(documents, gold):
    index = index_of.setdefault(document, len(index_of))
    if is_gold:
      gold_indices.add(index)
  unique = tuple(index_of)
  gold_sorted = tuple(sorted(gold_indices))
  gold_titles = tuple(dict.fromkeys(unique[i].title for i in gold_sorted))
  return QASample(question.id, dataset, question, unique, gold_titles, gold_sorted)


def _require_object(value: Any, where: str, item: str = "row") -> None:
  if not isinstance(value, dict):
    raise DataError(f"{where}: {item} should be a JSON object, got {_preview(value)}")


def _field(row: dict[str, Any], key: str, kind: type, where: str, item: str = "") -> Any:
  name = f"{item}.{key}" if item else key
  if key not in row:
    raise DataError(f"{where}: missing field {name!r}; is this the right file and "
                    "--dataset?")
  value = row[key]
  if not isinstance(value, kind):
    raise DataError(f"{where}: field {name!r} should be {kind.__name__}, got "
                    f"{_preview(value)}")
  return value


def _preview(value: Any) -> str:
  text = json.dumps(value, ensure_ascii=False)
  return text if len(text) <= 80 else text[:77] + "..."


# --- Long contexts ------------------------------------------------------------------------


def iter_long_contexts(samples: Sequence[QASample], num_docs: int, seed: int,
                       questions_per_context: int = 1,
                       pool: Sequence[QASample] | None = None) -> Iterator[LongContext]:
  """Yields long contexts one by one (see `build_long_contexts`)."""
  if num_docs < 1 or questions_per_context < 1 or seed < 0:
    raise ValueError(f"need num_docs >= 1, questions_per_context >= 1 and seed >= 0; got "
                     f"{num_docs}, {questions_per_context}, {seed}")
  # Sorted, so that the pool (and each context) does not depend on the order of samples.
  pool_documents = tuple(sorted({d for s in (pool if pool is not None else samples)
                                 for d in s.documents}, key=lambda d: (d.title, d.text)))
  pool_index = {document: i for i, document in enumerate(pool_documents)}
  for start in range(0, len(samples), questions_per_context):
    group = samples[start:start + questions_per_context]
    per_question = []
    for sample in group:
      gold = [sample.documents[i] for i in sample.gold_indices]
      missing = [d.title for d in gold if d not in pool_index]
      if missing:
        raise ValueError(f"sample {sample.id}: gold documents {missing} are not in the "
                         "pool; pass a pool that contains the samples")
      per_question.append([pool_index[d] for d in gold])
    yield _long_context(group, per_question, pool_documents, num_docs, seed)


def build_long_contexts(samples: Sequence[QASample], num_docs: int, seed: int,
                        questions_per_context: int = 1,
                        pool: Sequence[QASample] | None = None) -> list[LongContext]:
  """Gold documents plus distractors, shuffled: one context per group of questions.

  Consecutive `questions_per_context` samples share a context that holds all their gold
  documents. Distractors are drawn without replacement from the unique (title, text)
  documents of `pool` (default: `samples`, i.e. the whole split) until there are
  `num_docs` documents, or all of them when the pool is smaller. Each context has its own
  random generator seeded from (seed, context id), so the result does not depend on the
  order or subset processed; the same seed gives the same contexts.
  """
  return list(iter_long_contexts(samples, num_docs, seed, questions_per_context, pool))


def _long_context(group: Sequence[QASample], per_question: Sequence[Sequence[int]],
                  pool_documents: Sequence[Document], num_docs: int,
                  seed: int) -> LongContext:
  context_id = "+".join(sample.id for sample in group)
  gold = list(dict.fromkeys(i for indices in per_question for i in indices))
  if len(gold) > num_docs:
    raise ValueError(f"context {context_id} has {len(gold)} gold documents, more than "
                     f"num_docs={num_docs}; raise num_docs or lower questions_per_context")
  rng = np.random.default_rng([seed, stable_hash(context_id)])
  num_distractors = min(num_docs, len(pool_documents)) - len(gold)
  # Draw enough that, after removing gold documents, num_distractors remain.
  drawn = rng.choice(len(pool_documents), size=num_distractors + len(gold), replace=False)
  gold_set = set(gold)
  distractors = [int(i) for i in drawn if int(i) not in gold_set][:num_distractors]
  chosen = gold + distractors
  order = rng.permutation(len(chosen))
  position = {chosen[j]: k for k, j in enumerate(order)}
  return LongContext(
      id=context_id,
      dataset="+".join(dict.fromkeys(sample.dataset for sample in group)),
      questions=tuple(sample.question for sample in group),
      documents=tuple(pool_documents[chosen[j]] for j in order),
      gold_indices=tuple(tuple(sorted(position[i] for i in indices))
                         for indices in per_question),
      seed=seed,
      num_docs=num_docs,
  )


def stable_hash(text: str) -> int:
  """A 64-bit hash that, unlike `hash`, is the same in every process."""
  return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def render_context(documents: Sequence[Document]) -> str:
  """The context text the agent reads, one block per document, blank lines between.

  A block is "Document i:" (1-based), the title and the text on three lines: the layout of
  the AtomMem/MemAgent data, so released checkpoints see what they were trained on.
  """
  return "\n\n".join(f"Document {i}:\n{document.title}\n{document.text}"
                     for i, document in enumerate(documents, start=1))


# --- Storage ------------------------------------------------------------------------------


def _features():
  """The column schema; `datasets` is imported here because it takes seconds to load."""
  import datasets  # pylint: disable=g-import-not-at-top

  fact = {"doc_index": datasets.Value("int64"), "text": datasets.Value("string")}
  return datasets.Features({
      "id": datasets.Value("string"),
      "dataset": datasets.Value("string"),
      "questions": datasets.List({"id": datasets.Value("string"),
                                  "question": datasets.Value("string"),
                                  "answers": datasets.List(datasets.Value("string"))}),
      "documents": datasets.List({"title": datasets.Value("string"),
                                  "text": datasets.Value("string")}),
      "gold_indices": datasets.List(datasets.List(datasets.Value("int64"))),
      "seed": datasets.Value("int64"),
      "num_docs": datasets.Value("int64"),
      "evidence": datasets.List({"chain": datasets.List(fact),
                                 "superseded": datasets.List({"old": fact, "new": fact})}),
  })


_SUFFIXES = (".jsonl", ".parquet")


def save_long_contexts(contexts: Iterable[LongContext], path: str) -> int:
  """Writes contexts to `path` (.jsonl or .parquet, by suffix); at least one; returns how many.

  JSON lines are written as the contexts come, so a generator is never held whole in memory.
  """
  suffix = _suffix(path)
  iterator = iter(contexts)
  first = next(iterator, None)
  if first is None:
    raise ValueError(f"{path}: no contexts to save; check the input and --limit")
  count = 0
  with fileio.local_file_to_write(path) as local:  # a URL (gs://...) is uploaded whole
    if suffix == ".jsonl":
      with open(local, "w", encoding="utf-8") as f:
        for context in itertools.chain([first], iterator):
          f.write(json.dumps(dataclasses.asdict(context), ensure_ascii=False) + "\n")
          count += 1
      return count
    import datasets  # pylint: disable=g-import-not-at-top  (seconds to load)

    features = _features()
    rows = [dataclasses.asdict(context) for context in itertools.chain([first], iterator)]
    datasets.Dataset.from_dict({name: [row[name] for row in rows] for name in features},
                               features=features).to_parquet(local)
  return len(rows)


def load_long_contexts(path: str) -> list[LongContext]:
  """Reads contexts written by `save_long_contexts`, exactly as they were saved (a local path or
  a URL such as gs://...), checking every row: a bad one raises DataError naming the file, the
  line (JSON lines) or row (Parquet), and the field."""
  suffix = _suffix(path)
  if not fileio.isfile(path):
    raise FileNotFoundError(f"{path}: no such long-context file")
  if suffix == ".jsonl":
    located = ((f"{path}:{number}", parse_json_line(raw, f"{path}:{number}"))
               for number, raw in enumerate(fileio.read_bytes(path).splitlines(), start=1))
  else:
    located = ((f"{path} row {number}", row)
               for number, row in enumerate(_parquet_rows(path), start=1))
  contexts, first_seen = [], {}
  for where, row in located:
    if row is BLANK:
      continue
    context = context_from_row(row, where)
    if context.id in first_seen:
      raise DataError(f"{where}: context id {context.id!r} repeats the one at "
                      f"{first_seen[context.id]}; ids must be unique in a file")
    first_seen[context.id] = where
    contexts.append(context)
  if not contexts:
    raise DataError(f"{path}: no contexts in the file")
  return contexts


def _parquet_rows(path: str) -> list[Any]:
  import pyarrow.parquet  # pylint: disable=g-import-not-at-top  (seconds to load)

  with fileio.local_file_to_read(path) as local:
    try:
      return pyarrow.parquet.read_table(local).to_pylist()
    except Exception as e:  # pyarrow raises several kinds; all mean "not Parquet".
      raise DataError(f"{path}: not a Parquet file ({type(e).__name__}: {str(e)[:200]})") from e


def _suffix(path: str) -> str:
  suffix = os.path.splitext(path)[1]
  if suffix not in _SUFFIXES:
    raise ValueError(f"{path}: unknown file type {suffix!r}; use {' or '.join(_SUFFIXES)}")
  return suffix


class _Row:
  """Typed access to one JSON object; every error names the location and the field path."""

  def __init__(self, value: Any, where: str, name: str = ""):
    if not isinstance(value, dict):
      raise DataError(f"{where}: {f'field {name!r}' if name else 'row'} should be a JSON "
                      f"object, got {_preview(value)}; is this a file of save_long_contexts?")
    self.value, self.where, self.name = value, where, name

  def _path(self, key: str) -> str:
    return f"{self.name}.{key}" if self.name else key

  def get(self, key: str, kind: type | tuple[type, ...], *, nonempty: bool = False) -> Any:
    if key not in self.value or self.value[key] is None:
      raise DataError(f"{self.where}: missing field {self._path(key)!r}; is this a file of "
                      "save_long_contexts?")
    value = self.value[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
      names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
      raise DataError(f"{self.where}: field {self._path(key)!r} should be {names}, got "
                      f"{_preview(value)}")
    if nonempty and not value:
      raise DataError(f"{self.where}: field {self._path(key)!r} is empty")
    return value

  def items(self, key: str, *, nonempty: bool = False) -> list[_Row]:
    return [_Row(item, self.where, f"{self._path(key)}[{i}]")
            for i, item in enumerate(self.get(key, list, nonempty=nonempty))]

  def strings(self, key: str) -> tuple[str, ...]:
    values = self.get(key, list, nonempty=True)
    for i, value in enumerate(values):
      if not isinstance(value, str):
        raise DataError(f"{self.where}: field {self._path(key)}[{i}] should be a string, got "
                        f"{_preview(value)}")
    return tuple(values)

  def index(self, value: Any, name: str, size: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < size:
      raise DataError(f"{self.where}: field {name!r} = {_preview(value)} is not a document "
                      f"index (the context has {size} documents)")
    return value


def context_from_row(value: Any, where: str) -> LongContext:
  """A LongContext from one stored row, every field checked (DataError naming `where`)."""
  row = _Row(value, where)
  questions = tuple(Question(q.get("id", str, nonempty=True), q.get("question", str),
                             q.strings("answers"))
                    for q in row.items("questions", nonempty=True))
  documents = tuple(Document(d.get("title", str), d.get("text", str))
                    for d in row.items("documents", nonempty=True))
  gold = row.get("gold_indices", list)
  if len(gold) != len(questions):
    raise DataError(f"{where}: field 'gold_indices' has {len(gold)} lists for "
                    f"{len(questions)} questions; give one list per question")
  gold_indices = []
  for q, indices in enumerate(gold):
    if not isinstance(indices, list):
      raise DataError(f"{where}: field 'gold_indices[{q}]' should be a list, got "
                      f"{_preview(indices)}")
    gold_indices.append(tuple(row.index(i, f"gold_indices[{q}][{k}]", len(documents))
                              for k, i in enumerate(indices)))

  def fact(item: _Row) -> Fact:
    return Fact(row.index(item.value.get("doc_index"), f"{item.name}.doc_index",
                          len(documents)), item.get("text", str))

  evidence = tuple(
      Evidence(tuple(fact(f) for f in e.items("chain")),
               tuple(Supersession(fact(_Row(s.get("old", dict), where, f"{s.name}.old")),
                                  fact(_Row(s.get("new", dict), where, f"{s.name}.new")))
                     for s in e.items("superseded")))
      for e in (row.items("evidence") if row.value.get("evidence") is not None else []))
  if evidence and len(evidence) != len(questions):
    raise DataError(f"{where}: field 'evidence' has {len(evidence)} entries for "
                    f"{len(questions)} questions; give one per question or none")
  return LongContext(id=row.get("id", str, nonempty=True), dataset=row.get("dataset", str),
                     questions=questions, documents=documents,
                     gold_indices=tuple(gold_indices), seed=row.get("seed", int),
                     num_docs=row.get("num_docs", int), evidence=evidence)
