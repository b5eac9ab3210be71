"""A synthetic multi-hop task with changing facts, small enough to learn on a CPU.

Each context is a small fictional world. People and companies (two-syllable names like
"Zale") each have one profile document of short fact sentences:

  The friend of Zale is Beri.    Zale works for Kimo.    Zale lives in Tili.
  Zale was born in Rupe.         Kimo is based in Tili.  Kimo is owned by Beri.
  (fillers)  Zale likes tea.     Kimo sells lamps.

Later in the context, update documents change facts ("Update: Zale moved from Tili to
Rusu."), so the right answer uses the latest version: Update/Delete on the memory store pay
off. A question chains `hops` relations ("Where is the employer of the friend of Zale
based?") and its answer follows the chain through the latest facts. Profiles of distractor
people (never on a chain) fill the context up to `num_docs`.

Every context carries `Evidence` per question for the oracle teacher: the chain of facts
used (document index + sentence) and which earlier facts later documents superseded.
The vocabulary is small and regular: a fixed pool of names, a few verbs and filler nouns.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from atommem_jax.data.multihop import Document
from atommem_jax.data.multihop import Evidence
from atommem_jax.data.multihop import Fact
from atommem_jax.data.multihop import LongContext
from atommem_jax.data.multihop import Question
from atommem_jax.data.multihop import Supersession

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u")
# A fixed pool of 377 two-syllable names ("Baba" ... "Zuto"): every 13th combination.
NAMES = tuple(
    (a + b + c + d).capitalize()
    for a, b, c, d in itertools.product(_ONSETS, _VOWELS, _ONSETS, _VOWELS))[::13]
PERSON_LIKES = ("tea", "coffee", "music", "chess", "books", "rain", "cats", "dogs", "apples",
                "bread", "snow", "boats")
COMPANY_SELLS = ("lamps", "shoes", "bikes", "maps", "clocks", "hats", "soap", "rope",
                 "paper", "glass")

PERSON, COMPANY, CITY = "person", "company", "city"
RELATIONS = {  # relation -> (subject type, object type)
    "friend": (PERSON, PERSON),
    "employer": (PERSON, COMPANY),
    "home": (PERSON, CITY),
    "birthplace": (PERSON, CITY),
    "base": (COMPANY, CITY),
    "owner": (COMPANY, PERSON),
}
MUTABLE = ("friend", "employer", "home", "base", "owner")  # one is born only once
FACT_TEMPLATES = {
    "friend": "The friend of {s} is {o}.",
    "employer": "{s} works for {o}.",
    "home": "{s} lives in {o}.",
    "birthplace": "{s} was born in {o}.",
    "base": "{s} is based in {o}.",
    "owner": "{s} is owned by {o}.",
}
UPDATE_TEMPLATES = {
    "friend": "Update: the friend of {s} is now {new} instead of {old}.",
    "employer": "Update: {s} now works for {new} instead of {old}.",
    "home": "Update: {s} moved from {old} to {new}.",
    "base": "Update: {s} is now based in {new} instead of {old}.",
    "owner": "Update: {s} is now owned by {new} instead of {old}.",
}
NOUNS = {"friend": "friend", "employer": "employer", "owner": "owner"}  # "the X of ..."
QUESTION_TEMPLATES = {
    "friend": "Who is the friend of {np}?",
    "employer": "Who is the employer of {np}?",
    "owner": "Who is the owner of {np}?",
    "home": "Where does {np} live?",
    "birthplace": "Where was {np} born?",
    "base": "Where is {np} based?",
}
_CHAIN_UPDATE_PROBABILITY = 0.5  # share of updates aimed at a fact on some question's chain


@dataclasses.dataclass
class _Doc:
  title: str
  sentences: list[str]


def generate_synthetic(num_contexts: int, seed: int, *, num_entities: int = 8,
                       num_cities: int = 5, num_docs: int = 16, hops: int = 2,
                       num_updates: int = 2, doc_length: int = 5,
                       questions_per_context: int = 1) -> list[LongContext]:
  """Generates `num_contexts` contexts; the same arguments give the same contexts.

  Args:
    num_contexts: how many contexts.
    seed: context i uses a generator seeded from (seed, i).
    num_entities: people and companies in the world (a third companies, at least one).
    num_cities: cities (they appear in facts, they have no documents).
    num_docs: documents per context: one profile per entity, `num_updates` update
      documents, and profiles of distractor people for the rest.
    hops: relations chained by each question, 1 to 3.
    num_updates: update documents, each changing one fact after its previous version.
    doc_length: sentences per profile document: its relation facts plus fillers.
    questions_per_context: distinct questions asked about each context.
  """
  people = num_entities - max(1, num_entities // 3)
  checks = [
      (num_contexts >= 0 and seed >= 0, "num_contexts and seed must be >= 0"),
      (people >= 3, "num_entities must be >= 4 (at least 3 people and 1 company)"),
      (num_cities >= 2, "num_cities must be >= 2 so that moves are possible"),
      (1 <= hops <= 3, "hops must be 1, 2 or 3"),
      (num_updates >= 0, "num_updates must be >= 0"),
      (num_docs >= num_entities + num_updates,
       "num_docs must be >= num_entities + num_updates (one profile per entity plus the "
       "update documents)"),
      (num_docs - num_updates + num_cities <= len(NAMES),
       f"too many names needed: keep num_docs - num_updates + num_cities <= {len(NAMES)}"),
      (4 <= doc_length <= 2 + len(COMPANY_SELLS),
       f"doc_length must be in [4, {2 + len(COMPANY_SELLS)}]"),
      (questions_per_context >= 1, "questions_per_context must be >= 1"),
  ]
  for ok, message in checks:
    if not ok:
      raise ValueError(f"generate_synthetic: {message}")
  return [
      _context(index, seed, num_entities, num_cities, num_docs, hops, num_updates,
               doc_length, questions_per_context)
      for index in range(num_contexts)
  ]


def _context(index: int, seed: int, num_entities: int, num_cities: int, num_docs: int,
             hops: int, num_updates: int, doc_length: int,
             questions_per_context: int) -> LongContext:
  rng = np.random.default_rng([seed, index])
  num_companies = max(1, num_entities // 3)
  num_distractors = num_docs - num_entities - num_updates
  drawn = [NAMES[i] for i in rng.choice(len(NAMES), replace=False,
                                        size=num_entities + num_distractors + num_cities)]
  companies = drawn[:num_companies]
  people = drawn[num_companies:num_entities]
  distractors = drawn[num_entities:num_entities + num_distractors]
  cities = drawn[num_entities + num_distractors:]
  kind_of = {**{p: PERSON for p in people + distractors}, **{c: COMPANY for c in companies}}
  world = {PERSON: people, COMPANY: companies, CITY: cities}

  def pick(options, exclude=()):
    allowed = [o for o in options if o not in exclude]
    return allowed[rng.integers(len(allowed))]

  state = {}  # (subject, relation) -> object, the current version of each fact
  for subject in people + distractors + companies:
    for relation, (subject_kind, object_kind) in RELATIONS.items():
      if subject_kind == kind_of[subject]:
        state[subject, relation] = pick(world[object_kind], exclude=(subject,))

  paths = _draw_questions(rng, people + companies, kind_of, hops, questions_per_context)

  profiles = {}
  for subject in people + distractors + companies:
    facts = [FACT_TEMPLATES[r].format(s=subject, o=state[subject, r])
             for r, (kind, _) in RELATIONS.items() if kind == kind_of[subject]]
    fillers, template = ((PERSON_LIKES, "{s} likes {o}.") if kind_of[subject] == PERSON
                         else (COMPANY_SELLS, "{s} sells {o}."))
    chosen = rng.choice(len(fillers), size=doc_length - len(facts), replace=False)
    sentences = facts + [template.format(s=subject, o=fillers[i]) for i in chosen]
    profiles[subject] = _Doc(subject, [sentences[i] for i in rng.permutation(len(sentences))])
  subjects = list(profiles)
  docs = [profiles[subjects[i]] for i in rng.permutation(len(subjects))]
  versions = {key: [(profiles[key[0]], FACT_TEMPLATES[key[1]].format(s=key[0], o=value))]
              for key, value in state.items()}

  for _ in range(num_updates):
    subject, relation = _update_target(rng, state, paths, world, kind_of)
    old = state[subject, relation]
    new = pick(world[RELATIONS[relation][1]], exclude=(subject, old))
    state[subject, relation] = new
    sentence = UPDATE_TEMPLATES[relation].format(s=subject, old=old, new=new)
    update = _Doc(subject, [sentence])
    after = next(i for i, d in enumerate(docs) if d is versions[subject, relation][-1][0])
    docs.insert(int(rng.integers(after + 1, len(docs) + 1)), update)
    versions[subject, relation].append((update, sentence))

  position = {id(doc): i for i, doc in enumerate(docs)}
  context_id = f"synthetic-{seed}-{index}"
  questions, gold, evidence = [], [], []
  for number, (start, path) in enumerate(paths):
    chain, superseded = [], []
    steps = _follow(state, start, path)
    for subject, relation in steps:
      history = [Fact(position[id(doc)], text) for doc, text in versions[subject, relation]]
      chain.append(history[-1])
      superseded.extend(Supersession(a, b) for a, b in zip(history, history[1:]))
    questions.append(Question(f"{context_id}-q{number}", _question_text(start, path),
                              (state[steps[-1]],)))
    gold.append(tuple(sorted({fact.doc_index for fact in chain})))
    evidence.append(Evidence(tuple(chain), tuple(superseded)))
  return LongContext(
      id=context_id, dataset="synthetic", questions=tuple(questions),
      documents=tuple(Document(d.title, " ".join(d.sentences)) for d in docs),
      gold_indices=tuple(gold), seed=seed, num_docs=num_docs, evidence=tuple(evidence))


def _draw_questions(rng, starts, kind_of, hops, count) -> list[tuple[str, tuple[str, ...]]]:
  """Distinct (start entity, relation path) pairs; non-final hops lead to people/companies."""
  paths: list[tuple[str, tuple[str, ...]]] = []
  for _ in range(100 * count):
    start = starts[rng.integers(len(starts))]
    kind, path = kind_of[start], []
    for hop in range(hops):
      options = [r for r, (s, o) in RELATIONS.items()
                 if s == kind and (hop == hops - 1 or o != CITY)]
      path.append(options[rng.integers(len(options))])
      kind = RELATIONS[path[-1]][1]
    if (start, tuple(path)) not in paths:
      paths.append((start, tuple(path)))
      if len(paths) == count:
        return paths
  raise ValueError(f"generate_synthetic: cannot draw {count} distinct questions; raise "
                   "num_entities or hops, or lower questions_per_context")


def _follow(state, start, path) -> list[tuple[str, str]]:
  """The (subject, relation) facts a question's chain walks through in `state`."""
  steps, subject = [], start
  for relation in path:
    steps.append((subject, relation))
    subject = state[subject, relation]
  return steps


def _update_target(rng, state, paths, world, kind_of) -> tuple[str, str]:
  """A mutable world fact with an alternative value, often one on a question's chain."""
  def changeable(key):
    subject, relation = key
    options = world[RELATIONS[relation][1]]
    return (relation in MUTABLE and subject in world[kind_of[subject]]
            and len([o for o in options if o != subject]) >= 2)

  on_chain = [key for start, path in paths for key in _follow(state, start, path)
              if changeable(key)]
  if on_chain and rng.random() < _CHAIN_UPDATE_PROBABILITY:
    return on_chain[rng.integers(len(on_chain))]
  anywhere = [key for key in state if changeable(key)]
  return anywhere[rng.integers(len(anywhere))]


def _question_text(start: str, path: tuple[str, ...]) -> str:
  noun_phrase = start
  for relation in path[:-1]:
    noun_phrase = f"the {NOUNS[relation]} of {noun_phrase}"
  return QUESTION_TEMPLATES[path[-1]].format(np=noun_phrase)
