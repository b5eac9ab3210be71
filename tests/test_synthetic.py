"""Synthetic multi-hop task, checked by an independent resolver that reads the rendered text."""

from __future__ import annotations

import dataclasses
import re

import pytest

from atommem_jax.data.multihop import render_context
from atommem_jax.data.synthetic import generate_synthetic

# --- An independent reader of the rendered context: its own grammar, no generator code.
_FACTS = [
    (re.compile(r"The friend of (\w+) is (\w+)\."), "friend"),
    (re.compile(r"(\w+) works for (\w+)\."), "employer"),
    (re.compile(r"(\w+) lives in (\w+)\."), "home"),
    (re.compile(r"(\w+) was born in (\w+)\."), "birthplace"),
    (re.compile(r"(\w+) is based in (\w+)\."), "base"),
    (re.compile(r"(\w+) is owned by (\w+)\."), "owner"),
]
_UPDATES = [  # groups: subject, new, old
    (re.compile(r"Update: the friend of (\w+) is now (\w+) instead of (\w+)\."), "friend"),
    (re.compile(r"Update: (\w+) now works for (\w+) instead of (\w+)\."), "employer"),
    (re.compile(r"Update: (\w+) is now based in (\w+) instead of (\w+)\."), "base"),
    (re.compile(r"Update: (\w+) is now owned by (\w+) instead of (\w+)\."), "owner"),
]
_MOVE = re.compile(r"Update: (\w+) moved from (\w+) to (\w+)\.")  # subject, old, new
_FILLER = re.compile(r"(\w+) (?:likes|sells) (\w+)\.")
_QUESTIONS = [
    (re.compile(r"Who is the friend of (.+)\?"), "friend"),
    (re.compile(r"Who is the employer of (.+)\?"), "employer"),
    (re.compile(r"Who is the owner of (.+)\?"), "owner"),
    (re.compile(r"Where does (.+) live\?"), "home"),
    (re.compile(r"Where was (.+) born\?"), "birthplace"),
    (re.compile(r"Where is (.+) based\?"), "base"),
]
_NOUN_PHRASE = re.compile(r"the (friend|employer|owner) of (.+)")


@dataclasses.dataclass
class World:
  # (subject, relation) -> [(document number, sentence, value)], oldest first
  versions: dict
  documents: list  # (title, [sentences]) in reading order


def read_world(rendered: str) -> World:
  world = World({}, [])
  for number, block in enumerate(rendered.split("\n\n")):
    header, title, text = block.split("\n")
    assert header == f"Document {number + 1}:"
    sentences = re.split(r"(?<=\.) ", text)
    world.documents.append((title, sentences))
    for sentence in sentences:
      if _FILLER.fullmatch(sentence):
        continue
      subject, relation, old, new = _parse_fact(sentence)
      history = world.versions.setdefault((subject, relation), [])
      if old is None:
        assert not history, f"{sentence!r} states a fact a second time without 'Update'"
      else:
        assert history and history[-1][2] == old, f"{sentence!r} changes an unknown fact"
      assert subject == title
      history.append((number, sentence, new))
  return world


def _parse_fact(sentence):
  for pattern, relation in _FACTS:
    if match := pattern.fullmatch(sentence):
      return match.group(1), relation, None, match.group(2)
  for pattern, relation in _UPDATES:
    if match := pattern.fullmatch(sentence):
      return match.group(1), relation, match.group(3), match.group(2)
  if match := _MOVE.fullmatch(sentence):
    return match.group(1), "home", match.group(2), match.group(3)
  raise AssertionError(f"unexpected sentence {sentence!r}")


def resolve(world: World, question: str, *, latest: bool = True):
  """Follows the question's chain; returns (answer, [(subject, relation) per hop])."""
  for pattern, relation in _QUESTIONS:
    if match := pattern.fullmatch(question):
      return _resolve(world, match.group(1), [relation], latest)
  raise AssertionError(f"unexpected question {question!r}")


def _resolve(world, noun_phrase, relations, latest):
  while match := _NOUN_PHRASE.fullmatch(noun_phrase):
    relations.insert(0, match.group(1))
    noun_phrase = match.group(2)
  entity, used = noun_phrase, []
  for relation in relations:
    used.append((entity, relation))
    history = world.versions[entity, relation]
    entity = history[-1][2] if latest else history[0][2]
  return entity, used
# --- End of the independent reader.


def _updates(context):
  return [d for d in context.documents if d.text.startswith("Update:")]


def test_deterministic_and_seed_dependent():
  first = generate_synthetic(5, seed=11, hops=3, num_updates=3)
  assert first == generate_synthetic(5, seed=11, hops=3, num_updates=3)
  assert repr(first) == repr(generate_synthetic(5, seed=11, hops=3, num_updates=3))
  assert first != generate_synthetic(5, seed=12, hops=3, num_updates=3)
  # Context i depends on (seed, i) only.
  assert generate_synthetic(8, seed=11, hops=3, num_updates=3)[:5] == first


@pytest.mark.parametrize("hops,num_updates", [(1, 0), (1, 3), (2, 2), (3, 4)])
def test_answers_follow_latest_facts(hops, num_updates):
  contexts = generate_synthetic(40, seed=hops * 10 + num_updates, hops=hops,
                                num_updates=num_updates, questions_per_context=2)
  for context in contexts:
    world = read_world(render_context(context.documents))
    for question, gold, evidence in zip(context.questions, context.gold_indices,
                                        context.evidence, strict=True):
      answer, used = resolve(world, question.question)
      assert question.answers == (answer,)
      assert len(used) == hops
      histories = [[(n, s) for n, s, _ in world.versions[key]] for key in used]
      # The oracle's chain is the resolver's chain of latest facts, documents included.
      assert [(f.doc_index, f.text) for f in evidence.chain] == [h[-1] for h in histories]
      assert gold == tuple(sorted({h[-1][0] for h in histories}))
      for fact in evidence.chain:
        assert fact.text in context.documents[fact.doc_index].text
      # Superseded: each earlier version of a chain fact, replaced by the next version.
      expected = [pair for h in histories for pair in zip(h, h[1:])]
      assert [((s.old.doc_index, s.old.text), (s.new.doc_index, s.new.text))
              for s in evidence.superseded] == expected
      for s in evidence.superseded:
        assert s.old.doc_index < s.new.doc_index


def test_updates_change_some_answers():
  changed = total = 0
  for context in generate_synthetic(60, seed=3, hops=2, num_updates=3):
    world = read_world(render_context(context.documents))
    for question in context.questions:
      total += 1
      latest, _ = resolve(world, question.question)
      stale, _ = resolve(world, question.question, latest=False)
      changed += latest != stale
  assert 0.1 * total < changed < total
  for context in generate_synthetic(10, seed=3, num_updates=0):
    assert not _updates(context) and all(not e.superseded for e in context.evidence)


@pytest.mark.parametrize("knobs", [
    dict(num_entities=4, num_cities=2, num_docs=6, hops=1, num_updates=1, doc_length=4),
    dict(num_entities=12, num_cities=7, num_docs=30, hops=3, num_updates=5, doc_length=9,
         questions_per_context=3),
])
def test_knobs_are_respected(knobs):
  for context in generate_synthetic(10, seed=0, **knobs):
    world = read_world(render_context(context.documents))
    assert len(context.documents) == knobs["num_docs"]
    assert len(_updates(context)) == knobs["num_updates"]
    profiles = [(t, s) for t, s in world.documents if not s[0].startswith("Update:")]
    assert len(profiles) == knobs["num_docs"] - knobs["num_updates"]
    assert all(len(sentences) == knobs["doc_length"] for _, sentences in profiles)
    companies = {s for s, r in world.versions if r == "base"}
    assert len(companies) == max(1, knobs["num_entities"] // 3)
    cities = {v for (_, r), h in world.versions.items() if r in ("home", "base", "birthplace")
              for _, _, v in h}
    assert len(cities) <= knobs["num_cities"]
    # World people: those that world facts point to or that questions start from.
    referenced = {v for (_, r), h in world.versions.items() if r in ("friend", "owner")
                  for _, _, v in h}
    assert len(referenced | companies) <= knobs["num_entities"]
    assert len(context.questions) == knobs.get("questions_per_context", 1)
    assert len({q.question for q in context.questions}) == len(context.questions)
    for question in context.questions:
      assert len(resolve(world, question.question)[1]) == knobs["hops"]


@pytest.mark.parametrize("knobs,message", [
    (dict(hops=4), "hops must be 1, 2 or 3"),
    (dict(num_docs=5), "num_docs must be >= num_entities"),
    (dict(num_entities=3), "num_entities must be >= 4"),
    (dict(doc_length=3), "doc_length must be in"),
    (dict(num_entities=4, hops=1, questions_per_context=50), "distinct questions"),
])
def test_bad_knobs_raise(knobs, message):
  with pytest.raises(ValueError, match=message):
    generate_synthetic(1, seed=0, **knobs)
