"""Pretraining batches generated from the synthetic world, and the in-context lookup probe.

A row is one sequence of one task (`config_lib.PRETRAIN_TASKS`), drawn by pretrain.tasks'
weights; `loss_mask` marks the tokens trained:
  recall     "Zale is Beri . Kimo is Rupe . ... ? Kimo is Rupe . ? Zale is Beri ." -- facts
             with unique key names and random value names from `synthetic.NAMES`, then
             questions about some of them; loss on each asked value (one token each). A
             share of the rows (recall_plain_share) is written without " is" ("Zale Beri .
             ... ? Zale Beri ."): there the lookup is the plain induction step (copy the token
             that followed this one), which forms within a few hundred steps and then
             carries over to the " is" rows, which alone stall (BENCHMARKS.md).
  copy       a span of a training context's rendered documents, then the same span again;
             loss on the repeat.
  documents  a span of a training context's rendered documents; loss on every token.
  qa         a context's rendered documents (their last tokens, where updated facts are, when
             they do not fit max_len), then each question and its answer ("Question? Answer");
             loss on the answer tokens.
  facts      a context's rendered documents (cut as for qa), then FACTS_ASKED of its profile
             sentences restated (" ? Kozi was born in Rupe"); loss on each restated object:
             the lookup the agent makes when it copies a fact into memory, keyed by the
             subject and the relation together.
Everything is tokenized once (`make_corpus`); `pretrain_batch` is a pure function of
(seed, step), so a resumed run sees the same batches. The lookup probe (`probe_batch`,
`probe_accuracy`) is the recall task at 16 facts and 16 questions from a fixed generator,
scored by the argmax at the asked values; the reading probe (`qa_probe_batch`) is the qa task
on held-out contexts drawn from their own seed, scored the same way.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from atommem_jax import config_lib
from atommem_jax.data import multihop
from atommem_jax.data import synthetic
from atommem_jax.model import qwen3
from atommem_jax.train.batch import TrainBatch

FACTS_ASKED = 8  # restated sentences per facts row
LENGTH_MULTIPLE = 16  # rows are padded to a multiple of this many tokens (few compilations)
PROBE_SEED = 10_000
_STREAM = 0x70726574  # folded into the generator's seed: pretraining's own stream of draws
_PROBE_ROWS_PER_CALL = 32  # probe rows per forward (bounds the [rows, T, V] logits)


@dataclasses.dataclass(frozen=True)
class RecallTokens:
  """Token ids of the recall format: " Name" (one token each), " is", " .", " ?"."""

  names: np.ndarray  # [P] int32, the pool's names in order
  is_ids: tuple[int, ...]
  dot_ids: tuple[int, ...]
  ask_ids: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Corpus:
  """What the rows are cut from, tokenized once: recall ids (None when no recall rows or probe
  are wanted), each context's rendered documents, each context's (question, answer) ids, and
  (only when facts rows are wanted) each context's restated sentences."""

  recall: RecallTokens | None
  documents: tuple[np.ndarray, ...] = ()
  qa: tuple[tuple[tuple[np.ndarray, np.ndarray], ...], ...] = ()
  # per context, its profile sentences as (ids before the object, the object's ids)
  facts: tuple[tuple[tuple[np.ndarray, np.ndarray], ...], ...] = ()


def _ids(tokenizer, text: str) -> list[int]:
  return tokenizer.encode(text, add_special_tokens=False)


def recall_tokens(tokenizer, names: Sequence[str] = synthetic.NAMES) -> RecallTokens:
  """The recall format's ids; ValueError when a name is not one token with a leading space."""
  name_ids = [_ids(tokenizer, " " + name) for name in names]
  split = [name for name, ids in zip(names, name_ids) if len(ids) != 1]
  if split:
    raise ValueError(
        f"recall pretraining needs every name to be one token with a leading space, but "
        f"{len(split)} of {len(names)} are not (e.g. {' '.join(split[:5])}: {len(split)} split "
        "names); use a tokenizer trained on the synthetic world (tokenizer='synthetic' with "
        "enough data.synthetic.train_contexts), or drop recall from pretrain.tasks and set "
        "pretrain.probe_every_steps=0")
  return RecallTokens(names=np.array([ids[0] for ids in name_ids], np.int32),
                      is_ids=tuple(_ids(tokenizer, " is")), dot_ids=tuple(_ids(tokenizer, " .")),
                      ask_ids=tuple(_ids(tokenizer, " ?")))


def make_corpus(tokenizer, contexts: Sequence[multihop.LongContext], *, recall: bool,
                facts: bool = False, names: Sequence[str] = synthetic.NAMES) -> Corpus:
  """The corpus of `contexts` (may be empty when only recall rows are drawn); `recall`: build
  the recall ids (needed by recall rows and the probe); `facts`: tokenize each context's
  restated sentences (needed by facts rows and the restating probe)."""
  documents = tuple(np.array(_ids(tokenizer, multihop.render_context(context.documents)),
                             np.int32) for context in contexts)
  qa = tuple(tuple((np.array(_ids(tokenizer, "\n" + question.question), np.int32),
                    np.array(_ids(tokenizer, " " + question.answers[0]), np.int32))
                   for question in context.questions) for context in contexts)
  restated = tuple(tuple((np.array(_ids(tokenizer, prefix), np.int32),
                          np.array(_ids(tokenizer, obj), np.int32))
                         for prefix, obj in _fact_sentences(context))
                   for context in contexts) if facts else ()
  return Corpus(recall=recall_tokens(tokenizer, names) if recall else None,
                documents=documents, qa=qa, facts=restated)


def _fact_sentences(context: multihop.LongContext) -> list[tuple[str, str]]:
  """(" ? Kozi was born in", " Rupe") for each profile sentence that ends in a name; update
  sentences and fillers ("Kozi likes tea.") are left out."""
  pairs = []
  for document in context.documents:
    for sentence in document.text.split(". "):
      words = sentence.rstrip(".").split(" ")
      if len(words) < 3 or words[0] == "Update:" or not words[-1][:1].isupper():
        continue
      pairs.append((" ? " + " ".join(words[:-1]), " " + words[-1]))
  return pairs


def recall_facts_at(section: Mapping, step: int) -> int:
  """Facts in a recall row at `step` (0-based): recall_facts_start growing linearly to
  recall_facts over recall_curriculum_steps (rounded down), then recall_facts."""
  start, end, steps = (section["recall_facts_start"], section["recall_facts"],
                       section["recall_curriculum_steps"])
  if step >= steps:
    return end
  return start + (end - start) * step // steps


def recall_row(rng: np.random.Generator, tokens: RecallTokens, facts: int, queries: int,
               plain: bool = False) -> tuple[list[int], list[float]]:
  """(ids, loss mask) of one recall sequence: `facts` facts, then min(queries, facts) of
  them asked in random order; `plain`: without " is" ("Zale Beri . ? Zale Beri .")."""
  keys = rng.choice(len(tokens.names), facts, replace=False)
  values = rng.integers(len(tokens.names), size=facts)
  link = [] if plain else list(tokens.is_ids)
  ids, mask = [], []
  for key, value in zip(keys, values):
    fact = [int(tokens.names[key]), *link, int(tokens.names[value]), *tokens.dot_ids]
    ids += fact
    mask += [0.0] * len(fact)
  for asked in rng.choice(facts, min(queries, facts), replace=False):
    prefix = [*tokens.ask_ids, int(tokens.names[keys[asked]]), *link]
    ids += prefix + [int(tokens.names[values[asked]]), *tokens.dot_ids]
    mask += [0.0] * len(prefix) + [1.0] + [0.0] * len(tokens.dot_ids)
  return ids, mask


def _span(rng: np.random.Generator, ids: np.ndarray, length: int) -> list[int]:
  length = min(length, len(ids))
  start = int(rng.integers(0, len(ids) - length + 1))
  return ids[start:start + length].tolist()


def _copy_row(rng, corpus: Corpus, max_len: int) -> tuple[list[int], list[float]]:
  span = _span(rng, corpus.documents[int(rng.integers(len(corpus.documents)))], max_len // 2)
  return span + span, [0.0] * len(span) + [1.0] * len(span)


def _documents_row(rng, corpus: Corpus, max_len: int) -> tuple[list[int], list[float]]:
  span = _span(rng, corpus.documents[int(rng.integers(len(corpus.documents)))], max_len)
  return span, [0.0] + [1.0] * (len(span) - 1)


def _qa_row(rng, corpus: Corpus, max_len: int) -> tuple[list[int], list[float]]:
  return _qa_of(corpus, int(rng.integers(len(corpus.documents))), max_len)


def _qa_of(corpus: Corpus, index: int, max_len: int) -> tuple[list[int], list[float]]:
  return _after_documents(corpus, index, max_len, corpus.qa[index])


def _after_documents(corpus: Corpus, index: int, max_len: int,
                     asked: Sequence[tuple[np.ndarray, np.ndarray]]
                     ) -> tuple[list[int], list[float]]:
  """Context `index`'s documents (their last tokens when the row would pass max_len), then
  each (prompt, target) of `asked`; loss on the targets."""
  ids, mask = [], []
  for prompt, target in asked:
    ids += prompt.tolist() + target.tolist()
    mask += [0.0] * len(prompt) + [1.0] * len(target)
  documents = corpus.documents[index]
  documents = documents[max(len(documents) - max(max_len - len(ids), 1), 0):]
  return documents.tolist() + ids, [0.0] * len(documents) + mask


def _facts_row(rng, corpus: Corpus, max_len: int) -> tuple[list[int], list[float]]:
  return _facts_of(rng, corpus, int(rng.integers(len(corpus.documents))), max_len)


def _facts_of(rng, corpus: Corpus, index: int, max_len: int) -> tuple[list[int], list[float]]:
  facts = corpus.facts[index]
  chosen = rng.choice(len(facts), min(FACTS_ASKED, len(facts)), replace=False)
  return _after_documents(corpus, index, max_len, [facts[i] for i in chosen])


_ROWS = {"copy": _copy_row, "documents": _documents_row, "qa": _qa_row, "facts": _facts_row}


def rows_to_batch(rows: Sequence[tuple[list[int], list[float]]], pad_id: int,
                  row_multiple: int = 1) -> TrainBatch:
  """One sequence per row, right-padded to the longest rounded up to LENGTH_MULTIPLE, and
  empty rows added up to a multiple of `row_multiple`."""
  longest = max(len(ids) for ids, _ in rows)
  length = -(-longest // LENGTH_MULTIPLE) * LENGTH_MULTIPLE
  count = -(-len(rows) // row_multiple) * row_multiple
  tokens = np.full((count, length), pad_id, np.int32)
  positions = np.zeros((count, length), np.int32)
  segment_ids = np.zeros((count, length), np.int32)
  loss_mask = np.zeros((count, length), np.float32)
  for row, (ids, mask) in enumerate(rows):
    tokens[row, :len(ids)] = ids
    positions[row, :len(ids)] = np.arange(len(ids))
    segment_ids[row, :len(ids)] = 1
    loss_mask[row, :len(ids)] = mask
  return TrainBatch(tokens=tokens, positions=positions, segment_ids=segment_ids,
                    loss_mask=loss_mask, old_logprobs=np.zeros_like(loss_mask),
                    advantages=np.zeros_like(loss_mask))


def pretrain_batch(section: Mapping, corpus: Corpus, seed: int, step: int, *, pad_id: int,
                   row_multiple: int = 1) -> TrainBatch:
  """Pretraining batch of `step` (0-based): section.batch_size rows, each a task drawn by
  section.tasks' weights; a pure function of (seed, step) and the corpus."""
  weights = config_lib.pretrain_tasks(section["tasks"])
  names = list(weights)
  if any(name != "recall" for name in names) and not corpus.documents:
    raise ValueError(f"pretrain.tasks={section['tasks']!r} needs training contexts (copy, "
                     "documents and qa are cut from them) but there are none")
  rng = np.random.default_rng([seed, _STREAM, step])
  probabilities = np.array([weights[name] for name in names]) / sum(weights.values())
  tasks = rng.choice(len(names), section["batch_size"], p=probabilities)
  facts = recall_facts_at(section, step)
  if "recall" in names and corpus.recall is None:
    raise ValueError("recall rows need the recall ids: make_corpus(..., recall=True)")
  if "facts" in names and not corpus.facts:
    raise ValueError("facts rows need the restated sentences: make_corpus(..., facts=True)")
  rows = []
  for task in tasks:
    if names[task] == "recall":
      plain = bool(rng.random() < section["recall_plain_share"])
      rows.append(recall_row(rng, corpus.recall, facts, section["recall_queries"], plain))
    else:
      rows.append(_ROWS[names[task]](rng, corpus, section["max_len"]))
  return rows_to_batch(rows, pad_id, row_multiple)


def probe_batch(tokenizer, facts: int = 16, queries: int = 16, rows: int = 256,
                seed: int = PROBE_SEED, names: Sequence[str] = synthetic.NAMES) -> TrainBatch:
  """The lookup probe: `rows` recall rows of `facts` facts and `queries` questions from a
  fixed generator (the same rows for every model using the same tokenizer)."""
  tokens = recall_tokens(tokenizer, names)
  rng = np.random.default_rng(seed)
  return rows_to_batch([recall_row(rng, tokens, facts, queries) for _ in range(rows)],
                       tokenizer.pad_token_id)


def _held_out_corpus(tokenizer, synthetic_fields: Mapping, contexts: int, seed: int, *,
                     facts: bool = False) -> Corpus:
  """The corpus of `contexts` synthetic contexts of `synthetic_fields` (data.synthetic's
  fields; its context counts are not used) drawn from `seed`."""
  fields = {k: v for k, v in dict(synthetic_fields).items()
            if k not in ("train_contexts", "eval_contexts")}
  drawn = synthetic.generate_synthetic(contexts, seed=seed, **fields)
  return make_corpus(tokenizer, drawn, recall=False, facts=facts)


def qa_probe_batch(tokenizer, synthetic_fields: Mapping, contexts: int = 256,
                   max_len: int = 384, seed: int = PROBE_SEED) -> TrainBatch:
  """The reading probe: one qa row (documents, then each question followed by its answer)
  for each of `contexts` synthetic contexts of `synthetic_fields` (data.synthetic's fields;
  its context counts are not used), drawn from `seed`, which no run trains or evaluates on
  by default."""
  corpus = _held_out_corpus(tokenizer, synthetic_fields, contexts, seed)
  return rows_to_batch([_qa_of(corpus, index, max_len) for index in range(contexts)],
                       tokenizer.pad_token_id)


def facts_probe_batch(tokenizer, synthetic_fields: Mapping, contexts: int = 256,
                      max_len: int = 384, seed: int = PROBE_SEED) -> TrainBatch:
  """The restating probe: one facts row (documents, then FACTS_ASKED of their profile
  sentences restated up to the object) for each of `contexts` synthetic contexts of
  `synthetic_fields`, drawn from `seed` as `qa_probe_batch`'s."""
  corpus = _held_out_corpus(tokenizer, synthetic_fields, contexts, seed, facts=True)
  rng = np.random.default_rng(seed)
  return rows_to_batch([_facts_of(rng, corpus, index, max_len) for index in range(contexts)],
                       tokenizer.pad_token_id)


@functools.partial(jax.jit, static_argnums=0)
def _probe_hits(model_config, params, tokens: jax.Array, loss_mask: jax.Array) -> jax.Array:
  logits = qwen3.logits(model_config, params, tokens[:, :-1])
  return jnp.sum((jnp.argmax(logits, -1) == tokens[:, 1:]) * loss_mask[:, 1:])


def probe_accuracy(model_config, params, batch: TrainBatch) -> float:
  """Share of the masked targets (asked values) that the argmax of the logits gets right."""
  tokens, mask = np.asarray(batch.tokens), np.asarray(batch.loss_mask)
  hits = 0.0
  for start in range(0, len(tokens), _PROBE_ROWS_PER_CALL):
    chunk = slice(start, start + _PROBE_ROWS_PER_CALL)
    hits += float(_probe_hits(model_config, params, tokens[chunk], mask[chunk]))
  return hits / max(float(mask.sum()), 1.0)
