"""Scripted teacher policies that use gold information, and the host-side episode driver.

Both policies know each context's gold facts but only act on what an observation shows:
a fact is stored when its sentence is visible in the current chunk, and a question gets
its gold answer only when every supporting fact (latest version) is visible in the
prompt (retrieved memories and scratchpad); otherwise the answer is "unknown". Their
exact match therefore measures what memory and retrieval really kept: an honest upper
bound, not 100% by construction.

Gold facts (units): for the synthetic task, the facts of each question's `Evidence` chain
and the older versions they supersede; for real benchmarks, the sentences of each
question's gold documents.

- `OraclePolicy` (AtomMem-style): creates one entry per gold document seen in a chunk
  ("Title: sentence ..."); when a later document supersedes a stored fact it first Reads
  the stored entry (unless the current retrieval already shows it), then, with the
  retrieval shown, Updates that "Memory i" (or Deletes it and Creates the new version).
  Its scratchpad names, per question, the documents seen; it is rewritten alongside the
  store actions when it changed. On a chunk with nothing to store it answers with no
  action at all, which moves to the next chunk. Before answering it Reads with the
  question and those titles. For SFT data it can start episodes from a wrong memory (a
  decoy written at the first chunk, before the fact is shown) and repair it like a stale
  version when the fact appears: the states a learnt policy reaches when it writes early.
- `MemAgentPolicy` (MemAgent-style workflow baseline, no store): rewrites its scratchpad
  every step with the gold facts seen so far (latest versions) within a token budget,
  dropping the oldest facts when it overflows.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from typing import Protocol, Sequence

import numpy as np

from atommem_jax.agent import env as env_lib
from atommem_jax.agent.actions import Action
from atommem_jax.agent.actions import ActionKind
from atommem_jax.agent.actions import ALL_KINDS
from atommem_jax.agent.actions import render_actions
from atommem_jax.data.multihop import LongContext
from atommem_jax.memory.store import Retrieved

UNKNOWN_ANSWER = "unknown"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_NAME = re.compile(r"\b[A-Z][a-z]+\b")
_LAST_NAME = re.compile(r"\b[A-Z][a-z]+\b(?=[^A-Za-z]*$)")


class Policy(Protocol):
  """Maps the observations of active episodes to one response each."""

  def reset(self, contexts: Sequence[LongContext]) -> None:
    ...

  def act(self, observations: Sequence[env_lib.Observation]) -> list[str]:
    ...


def run_episodes(env: env_lib.MemoryEnv, policy: Policy,
                 contexts: Sequence[LongContext]) -> list[env_lib.EpisodeResult]:
  """Runs `policy` on one episode per context until all are done."""
  observations = env.reset(contexts)
  policy.reset(contexts)
  while observations:
    observations = env.step(policy.act(observations))
  return env.results()


@dataclasses.dataclass(frozen=True)
class GoldUnit:
  """One gold fact: a sentence of document `doc_index`, maybe part of a version chain."""
  index: int
  doc_index: int
  title: str
  text: str
  replaces: int | None = None  # the unit this one supersedes
  replaced_by: int | None = None  # the unit that supersedes this one

  @property
  def line(self) -> str:
    return f"{self.title}: {self.text}"


@dataclasses.dataclass(frozen=True)
class GoldFacts:
  """A context's gold units and, per question, the units that must be seen to answer."""
  units: tuple[GoldUnit, ...]
  required: tuple[tuple[int, ...], ...]


def gold_facts(context: LongContext) -> GoldFacts:
  """Gold units of a context (see the module docstring)."""
  index_of: dict[tuple[int, str], int] = {}
  fields: list[dict] = []

  def unit(doc_index: int, text: str) -> int:
    key = (doc_index, text)
    if key not in index_of:
      index_of[key] = len(fields)
      fields.append(dict(index=len(fields), doc_index=doc_index,
                         title=context.documents[doc_index].title.strip(), text=text))
    return index_of[key]

  required = []
  if context.evidence:
    for evidence in context.evidence:
      required.append(tuple(unit(fact.doc_index, fact.text) for fact in evidence.chain))
      for supersession in evidence.superseded:
        old = unit(supersession.old.doc_index, supersession.old.text)
        new = unit(supersession.new.doc_index, supersession.new.text)
        fields[old]["replaced_by"], fields[new]["replaces"] = new, old
  else:
    for doc_indices in context.gold_indices:
      required.append(tuple(unit(d, sentence) for d in doc_indices
                            for sentence in _sentences(context.documents[d].text)))
  return GoldFacts(tuple(GoldUnit(**f) for f in fields), tuple(required))


def _sentences(text: str) -> list[str]:
  return [piece for piece in _SENTENCE_END.split(text.strip()) if piece]


def _newly_visible(gold: GoldFacts, observation: env_lib.Observation,
                   handled: set[int]) -> list[GoldUnit]:
  """Units not handled yet whose sentence is in the chunk shown, minus those superseded
  by a version visible in the same chunk (marked handled)."""
  documents = set(observation.document_indices)
  visible = [u for u in gold.units if u.index not in handled and u.doc_index in documents
             and u.text in observation.chunk_text]
  visible_indices = {u.index for u in visible}
  fresh = []
  for unit in visible:
    if unit.replaced_by is not None and (unit.replaced_by in visible_indices
                                         or unit.replaced_by in handled):
      handled.add(unit.index)
    else:
      fresh.append(unit)
  return fresh


def _kept_version(gold: GoldFacts, unit: GoldUnit, kept) -> int | None:
  """The latest older version of `unit` that is in `kept` (a version may have been skipped
  because it and its successor were seen together), or None."""
  older = unit.replaces
  while older is not None and older not in kept:
    older = gold.units[older].replaces
  return older


def _answer(gold_answer: str, gold: GoldFacts, question_index: int, visible_text: str) -> str:
  """The gold answer if every required unit is in `visible_text`, else "unknown"."""
  present = all(gold.units[u].text in visible_text for u in gold.required[question_index])
  return gold_answer.strip() or UNKNOWN_ANSWER if present else UNKNOWN_ANSWER


@dataclasses.dataclass
class _OracleState:
  context: LongContext
  gold: GoldFacts
  handled: set[int] = dataclasses.field(default_factory=set)
  entries: list[tuple[str, list[int]]] = dataclasses.field(default_factory=list)  # label, units
  entry_of: dict[int, int] = dataclasses.field(default_factory=dict)  # stored unit -> entry
  seen_titles: list[list[str]] = dataclasses.field(default_factory=list)  # per question
  notes: str = ""  # the scratchpad last written
  read_chunk: int | None = None  # chunk where the Read for stale entries was issued
  read_question: int | None = None  # question whose Read was issued
  # Decoy entries not repaired yet: entry -> (the question it stands for, its sentence).
  decoys: dict[int, tuple[int, str]] = dataclasses.field(default_factory=dict)
  decoy_steps: set[int] = dataclasses.field(default_factory=set)  # steps that wrote decoys

  def entry_text(self, entry: int) -> str:
    label, units = self.entries[entry]
    if entry in self.decoys:
      return f"{label} {self.decoys[entry][1]}"
    return f"{label} " + " ".join(self.gold.units[u].text for u in units)

  def versions(self, question: int) -> set[int]:
    """The units `question` needs, with every older version of them."""
    found = set()
    for unit in self.gold.required[question]:
      while unit is not None:
        found.add(unit)
        unit = self.gold.units[unit].replaces
    return found

  def decoy_for(self, unit: GoldUnit) -> int | None:
    """The decoy entry standing where `unit` belongs (a question needs it), or None."""
    for entry, (question, _) in self.decoys.items():
      if unit.index in self.versions(question):
        return entry
    return None

  def label(self, unit: GoldUnit, entry_label: str) -> str:
    """"Title:", or the first question whose answer needs `unit` (or a later version of it)."""
    if entry_label == "question":
      latest = unit
      while latest.replaced_by is not None:
        latest = self.gold.units[latest.replaced_by]
      for question, required in enumerate(self.gold.required):
        if latest.index in required:
          return self.context.questions[question].question.strip()
    return f"{unit.title}:"


class OraclePolicy:
  """Gold-guided AtomMem teacher (see the module docstring).

  Args:
    enabled: action kinds the environment accepts (`EnvConfig.enabled_actions`); without
      READ, CREATE and UPDATE (or DELETE), superseding facts are stored as new entries.
    supersede: "update" (Update the stale entry) or "delete" (Delete it, Create the new).
    entry_chars: longest entry text; a document's sentences are packed into entries.
    entry_label: what an entry starts with: "title" ("Title: sentence ...") or "question"
      (the question the sentences answer, then the sentences; "Title:" for a sentence no
      question needs). A question-labelled entry restates the relation asked right before
      the sentence that answers it (BENCHMARKS.md, the demo).
    boxed_space: answers are written `\\boxed{ text}` (see `actions.render_actions`).
    decoy_share: share of the contexts (drawn per context id) whose episode starts from a
      wrong memory: at the first chunk, a question none of whose facts that chunk shows gets
      a decoy entry (its label, then the oldest version of its fact with the last name
      swapped for another name of the chunk), as a policy that writes before the fact
      appears would store; when the fact appears, the decoy is edited like a stale version.
      The steps that wrote decoys are in `decoy_steps` (not teaching material: the
      states after them are). Only for contexts with `Evidence` (the synthetic task).
  """

  def __init__(self, *, enabled: frozenset[ActionKind] = ALL_KINDS, supersede: str = "update",
               entry_chars: int = 2000, entry_label: str = "title", boxed_space: bool = False,
               decoy_share: float = 0.0):
    if not 0.0 <= decoy_share <= 1.0:
      raise ValueError(f"decoy_share={decoy_share} must be in [0, 1]")
    if supersede not in ("update", "delete"):
      raise ValueError(f"supersede={supersede!r} must be 'update' or 'delete'")
    if entry_label not in ("title", "question"):
      raise ValueError(f"entry_label={entry_label!r} must be 'title' or 'question'")
    edit = ActionKind.UPDATE if supersede == "update" else ActionKind.DELETE
    self.enabled = enabled
    self.supersede = supersede
    self.entry_chars = entry_chars
    self.entry_label = entry_label
    self.boxed_space = boxed_space
    self.decoy_share = decoy_share
    self._can_replace = {ActionKind.READ, ActionKind.CREATE, edit} <= enabled
    self._states: list[_OracleState] = []

  def reset(self, contexts: Sequence[LongContext]) -> None:
    self._states = [_OracleState(c, gold_facts(c), seen_titles=[[] for _ in c.questions])
                    for c in contexts]

  def act(self, observations: Sequence[env_lib.Observation]) -> list[str]:
    return [self._respond(self._states[o.episode], o) for o in observations]

  def decoy_steps(self, episode: int) -> frozenset[int]:
    """Steps of `episode` (of the last `reset`) whose response wrote a decoy entry."""
    return frozenset(self._states[episode].decoy_steps)

  def _respond(self, state: _OracleState, observation: env_lib.Observation) -> str:
    return render_actions(self._act(state, observation), boxed_space=self.boxed_space)

  def _act(self, state: _OracleState, observation: env_lib.Observation) -> list[Action]:
    if observation.phase == env_lib.ANSWER_PHASE:
      return self._answer_step(state, observation)
    fresh = _newly_visible(state.gold, observation, state.handled)
    # unit -> (the stored entry it replaces, the older version stored there; None: a decoy)
    stale_of: dict[int, tuple[int, int | None]] = {}
    if self._can_replace:
      for unit in fresh:
        older = _kept_version(state.gold, unit, state.entry_of)
        if older is not None:
          stale_of[unit.index] = (state.entry_of[older], older)
        elif (decoy := state.decoy_for(unit)) is not None:
          stale_of[unit.index] = (decoy, None)
    stale = dict.fromkeys(entry for entry, _ in stale_of.values())
    shown = {memory.text for memory in observation.retrieved}
    if (any(state.entry_text(entry) not in shown for entry in stale)
        and state.read_chunk != observation.chunk_index
        and observation.queries_used < observation.max_queries):
      # First find the stale entries; the next step shows them as Memory i.
      state.read_chunk = observation.chunk_index
      query = " ".join(state.entry_text(entry) for entry in stale)
      return self._with_scratchpad(state, [Action(ActionKind.READ, query)])
    actions, created = self._replace(state, fresh, stale_of, observation.retrieved)
    if ActionKind.CREATE in self.enabled:
      for doc_units in _group(created, lambda u: u.doc_index).values():
        actions += [Action(ActionKind.CREATE, text) for text in self._store(state, doc_units)]
      if observation.chunk_index == 0 and self._decoys_for(state.context):
        decoys = self._decoys(state, observation)
        if decoys:
          state.decoy_steps.add(observation.step)
          actions += decoys
    for unit in fresh:
      state.handled.add(unit.index)
      for question, required in enumerate(state.gold.required):
        titles = state.seen_titles[question]
        if unit.title not in titles and any(
            state.gold.units[u].doc_index == unit.doc_index for u in required):
          titles.append(unit.title)
    return self._with_scratchpad(state, actions)

  def _replace(self, state: _OracleState, fresh: Sequence[GoldUnit],
               stale_of: dict[int, tuple[int, int | None]],
               retrieved: Sequence[Retrieved]) -> tuple[list[Action], list[GoldUnit]]:
    """Edits the shown stale entries (`stale_of`: unit -> the entry it replaces and the older
    version stored there, None for a decoy); returns the edits and the units still to
    create."""
    actions = []
    created = [u for u in fresh if u.index not in stale_of]
    shown = [memory.text for memory in retrieved]
    superseding = [u for u in fresh if u.index in stale_of]
    for entry, units in _group(superseding, lambda u: stale_of[u.index][0]).items():
      text = state.entry_text(entry)
      if text not in shown:
        created.extend(units)  # the stale entry was not retrieved: store the new version
        continue
      members = state.entries[entry][1]
      for unit in units:
        older = stale_of[unit.index][1]
        if older is None:  # a decoy's place
          members.append(unit.index)
        else:
          members[members.index(older)] = unit.index
          del state.entry_of[older]
        state.entry_of[unit.index] = entry
      state.decoys.pop(entry, None)
      memory_index = shown.index(text) + 1
      if self.supersede == "update":
        actions.append(Action(ActionKind.UPDATE, state.entry_text(entry), memory_index))
      else:
        actions += [Action(ActionKind.DELETE, memory_index=memory_index),
                    Action(ActionKind.CREATE, state.entry_text(entry))]
    return actions, created

  def _store(self, state: _OracleState, units: Sequence[GoldUnit]) -> list[str]:
    """Packs one document's units into new entries of at most `entry_chars`; their texts."""
    packs: list[list[GoldUnit]] = []
    labels: list[str] = []
    length = 0
    for unit in units:
      length += len(unit.text) + 1
      label = state.label(unit, self.entry_label)
      if not packs or label != labels[-1] or len(label) + length > self.entry_chars:
        labels.append(label)
        packs.append([])
        length = len(unit.text) + 1
      packs[-1].append(unit)
    texts = []
    for label, pack in zip(labels, packs):
      state.entries.append((label, [unit.index for unit in pack]))
      state.entry_of.update((unit.index, len(state.entries) - 1) for unit in pack)
      texts.append(state.entry_text(len(state.entries) - 1))
    return texts

  def _decoys_for(self, context: LongContext) -> bool:
    if not self.decoy_share or not context.evidence:
      return False
    draw = np.random.default_rng(zlib.crc32(context.id.encode())).random()
    return bool(draw < self.decoy_share)

  def _decoys(self, state: _OracleState, observation: env_lib.Observation) -> list[Action]:
    """Decoy Creates for the questions none of whose facts is stored yet (see the class)."""
    rng = np.random.default_rng(zlib.crc32(f"{state.context.id}/decoy".encode()))
    actions = []
    for question in range(len(state.gold.required)):
      versions = state.versions(question)
      if not versions or versions & set(state.entry_of):
        continue
      oldest = min(versions, key=lambda u: (state.gold.units[u].replaces is not None, u))
      sentence = state.gold.units[oldest].text
      last = _LAST_NAME.search(sentence)
      if last is None:
        continue
      names = sorted(set(_NAME.findall(observation.chunk_text))
                     - set(_NAME.findall(sentence)) - {"Document", "Update", "The"})
      if not names:
        continue
      wrong = names[int(rng.integers(len(names)))]
      label = state.label(state.gold.units[oldest], self.entry_label)
      state.entries.append((label, []))
      entry = len(state.entries) - 1
      state.decoys[entry] = (question,
                             sentence[:last.start()] + wrong + sentence[last.end():])
      actions.append(Action(ActionKind.CREATE, state.entry_text(entry)))
    return actions

  def _answer_step(self, state: _OracleState, observation: env_lib.Observation) -> list[Action]:
    question = observation.question_index
    if (ActionKind.READ in self.enabled and state.read_question != question
        and observation.queries_used < observation.max_queries):
      state.read_question = question
      query = " ".join([observation.questions[question].strip()] + state.seen_titles[question])
      return [Action(ActionKind.READ, query)]
    visible = "\n".join([m.text for m in observation.retrieved] + [observation.scratchpad])
    gold_answer = state.context.questions[question].answers[0]
    return [Action(ActionKind.ANSWER, _answer(gold_answer, state.gold, question, visible))]

  def _with_scratchpad(self, state: _OracleState, actions: list[Action]) -> list[Action]:
    """`actions` after a scratchpad rewrite when the notes changed (none without actions:
    a response with no action moves on, one with only a scratchpad rewrite would not)."""
    if ActionKind.SCRATCHPAD not in self.enabled or not actions:
      return actions
    notes = "\n".join(f"Q{i}: " + ("; ".join(titles) if titles else "no sources yet")
                      for i, titles in enumerate(state.seen_titles, start=1))
    if notes == state.notes:
      return actions
    state.notes = notes
    return [Action(ActionKind.SCRATCHPAD, notes)] + actions


def _group(units: Sequence[GoldUnit], key) -> dict:
  groups: dict = {}
  for unit in units:
    groups.setdefault(key(unit), []).append(unit)
  return groups


@dataclasses.dataclass
class _MemAgentState:
  context: LongContext
  gold: GoldFacts
  handled: set[int] = dataclasses.field(default_factory=set)
  facts: list[int] = dataclasses.field(default_factory=list)  # units kept, oldest first


class MemAgentPolicy:
  """Gold-guided MemAgent-style baseline: everything lives in a bounded scratchpad.

  Args:
    tokenizer: counts the scratchpad's tokens.
    scratchpad_tokens: scratchpad budget; the oldest facts are dropped past it.
    boxed_space: answers are written `\\boxed{ text}` (see `actions.render_actions`).
  """

  def __init__(self, tokenizer, *, scratchpad_tokens: int = 1024, boxed_space: bool = False):
    self.tokenizer = tokenizer
    self.scratchpad_tokens = scratchpad_tokens
    self.boxed_space = boxed_space
    self._states: list[_MemAgentState] = []

  def reset(self, contexts: Sequence[LongContext]) -> None:
    self._states = [_MemAgentState(c, gold_facts(c)) for c in contexts]

  def act(self, observations: Sequence[env_lib.Observation]) -> list[str]:
    return [render_actions([self._act(self._states[o.episode], o)], boxed_space=self.boxed_space)
            for o in observations]

  def _act(self, state: _MemAgentState, observation: env_lib.Observation) -> Action:
    if observation.phase == env_lib.ANSWER_PHASE:
      question = observation.question_index
      gold_answer = state.context.questions[question].answers[0]
      return Action(ActionKind.ANSWER,
                    _answer(gold_answer, state.gold, question, observation.scratchpad))
    for unit in _newly_visible(state.gold, observation, state.handled):
      state.handled.add(unit.index)
      older = _kept_version(state.gold, unit, state.facts)
      if older is not None:
        state.facts[state.facts.index(older)] = unit.index
      else:
        state.facts.append(unit.index)
    while state.facts and self._tokens(state) > self.scratchpad_tokens:
      state.facts.pop(0)
    return Action(ActionKind.SCRATCHPAD, self._notes(state) or "no relevant facts yet")

  def _notes(self, state: _MemAgentState) -> str:
    return "\n".join(state.gold.units[u].line for u in state.facts)

  def _tokens(self, state: _MemAgentState) -> int:
    return len(self.tokenizer.encode(self._notes(state), add_special_tokens=False))
