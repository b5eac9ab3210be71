r"""The AtomMem episode environment: a host-side state machine over a batch of episodes.

An episode reads one `LongContext` chunk by chunk ("read" phase), then answers each of its
questions in turn ("answer" phase). Every step shows the agent its questions, scratchpad,
current retrieval query, the memories that query finds now, and the current chunk (or the
question to answer); the agent replies with tagged actions (`agent.actions`).

Step rules:
- Read latency: a query set at step t is embedded once and searched in the prompts of step
  t + 1 onwards (the query persists and is searched against the store as it is when each
  prompt is built, so edits show up). "Memory i" in a response means entry i of the
  retrieval shown in the prompt that response answers; all its actions use that mapping.
- Read phase: a response whose only store action is an accepted Read (a scratchpad rewrite
  may come with it) shows the same chunk again; anything else (Create/Update/Delete, or no
  store action) moves to the next chunk. After the last chunk the answer phase starts.
- Answer phase: `<final_answer>` records the answer and moves to the next question; else an
  accepted Read asks the same question again; else the response's last `\boxed{}` (or "")
  is recorded. Store edits are not allowed in this phase (a scratchpad rewrite is).
- Reads per chunk (read phase) or per question (answer phase) are capped at
  `max_queries_per_question`; a Read past the cap is invalid ("query_limit") and the
  response counts as having no Read.
- Invalid actions (parser problems, disabled actions, "query_limit", "store_full") are never
  applied and are counted in the episode's stats.
- `max_steps` ends a runaway episode; its unanswered questions get "".

Batching: `reset` and `step` return one `Observation` per episode that is not done, in
episode order, and `step` takes exactly one response per observation of the previous call,
in the same order. All texts to embed in one `step` (Create/Update texts of every episode)
go in one `embed_documents` call and all new queries in one `embed_queries` call.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Mapping, Sequence

import numpy as np

from atommem_jax.agent import chunking
from atommem_jax.agent import prompts
from atommem_jax.agent import reward
from atommem_jax.agent import stats as stats_lib
from atommem_jax.agent.actions import Action
from atommem_jax.agent.actions import ActionKind
from atommem_jax.agent.actions import parse_response
from atommem_jax.agent.actions import Problem
from atommem_jax.data import multihop
from atommem_jax.memory import embed as embed_lib
from atommem_jax.memory import store as store_lib

READ_PHASE = "read"
ANSWER_PHASE = "answer"
_STORE_EDITS = frozenset({ActionKind.CREATE, ActionKind.UPDATE, ActionKind.DELETE})
_ANSWER_PHASE_KINDS = frozenset({ActionKind.SCRATCHPAD, ActionKind.READ, ActionKind.ANSWER})


@dataclasses.dataclass(frozen=True)
class EnvConfig:
  """Episode settings (defaults: the paper's; the booleans are ablation switches).

  Attributes:
    chunk_tokens: core tokens per chunk.
    chunk_overlap: tokens shown from each neighbouring chunk.
    max_chunks: chunks read at most; longer contexts are truncated (counted in the stats).
    top_k: memories retrieved per query.
    max_retrieved_tokens: token budget of the retrieved memories in a prompt.
    max_queries_per_question: Reads allowed per chunk (read phase) or question (answer
      phase), as in the reference implementation's limit of 3.
    max_steps: steps per episode at most; None means 4 * max_chunks + 20.
    max_response_chars: a longer response is cut to this before parsing.
    max_content_chars: an action's content longer than this is invalid.
    scratchpad: allow `<update_memory>`.
    store: use the long-term store at all (False with scratchpad True: MemAgent-style).
    create, read, update, delete: allow each store action (only when `store`).
    max_store_entries: store capacity; a Create beyond it is invalid ("store_full").
    store_size_penalty: reward penalty per store entry beyond `store_free_size` at the end.
    store_free_size: entries that cost nothing.
    prompt_template: path of a template file (`prompts.PromptTemplate.load`), or None.
    store_backend: "scann" or "exact".
  """
  chunk_tokens: int = 4000
  chunk_overlap: int = 100
  max_chunks: int = 40
  top_k: int = 6
  max_retrieved_tokens: int = 4096
  max_queries_per_question: int = 3
  max_steps: int | None = None
  max_response_chars: int = 32768
  max_content_chars: int = 4000
  scratchpad: bool = True
  store: bool = True
  create: bool = True
  read: bool = True
  update: bool = True
  delete: bool = True
  max_store_entries: int | None = None
  store_size_penalty: float = 0.0
  store_free_size: int = 0
  prompt_template: str | None = None
  store_backend: str = "scann"

  def __post_init__(self):
    for name in ("chunk_tokens", "max_chunks", "top_k", "max_retrieved_tokens",
                 "max_response_chars", "max_content_chars"):
      if getattr(self, name) < 1:
        raise ValueError(f"EnvConfig.{name}={getattr(self, name)} must be >= 1")
    for name in ("chunk_overlap", "max_queries_per_question"):
      if getattr(self, name) < 0:
        raise ValueError(f"EnvConfig.{name}={getattr(self, name)} must be >= 0")
    if self.max_steps is not None and self.max_steps < 1:
      raise ValueError(f"EnvConfig.max_steps={self.max_steps} must be >= 1 or None")
    if self.store_backend not in store_lib.BACKENDS:
      raise ValueError(f"EnvConfig.store_backend={self.store_backend!r} is not one of "
                       f"{store_lib.BACKENDS}")

  @property
  def step_limit(self) -> int:
    return self.max_steps if self.max_steps is not None else 4 * self.max_chunks + 20

  @property
  def enabled_actions(self) -> frozenset[ActionKind]:
    """Every action kind the agent may use in some phase."""
    kinds = {ActionKind.ANSWER}
    if self.scratchpad:
      kinds.add(ActionKind.SCRATCHPAD)
    if self.store:
      switches = ((self.create, ActionKind.CREATE), (self.read, ActionKind.READ),
                  (self.update, ActionKind.UPDATE), (self.delete, ActionKind.DELETE))
      kinds.update(kind for enabled, kind in switches if enabled)
    return frozenset(kinds)

  def allowed_actions(self, phase: str) -> frozenset[ActionKind]:
    """Action kinds accepted in `phase` ("read" or "answer")."""
    if phase == READ_PHASE:
      return self.enabled_actions - {ActionKind.ANSWER}
    return self.enabled_actions & _ANSWER_PHASE_KINDS


@dataclasses.dataclass(frozen=True)
class Observation:
  """One episode's prompt for the next step, with the structured fields behind it.

  Attributes:
    episode: index of the episode in the batch given to `reset`.
    context_id: the context's id.
    step: 0-based step this prompt is for.
    phase: "read" or "answer".
    questions: the context's questions.
    question_index: question to answer now (answer phase), else None.
    chunk_index: chunk shown (read phase), else None.
    num_chunks: chunks of the context.
    chunk_text: the chunk shown ("" in the answer phase).
    chunk_span: its token positions in the context, or None.
    document_indices: indices of the context documents the chunk touches.
    scratchpad: the scratchpad text.
    query: the current retrieval query ("" before the first Read).
    retrieved: the memories shown as Memory 1..k (ids are the stable store ids).
    queries_used: Reads used at this chunk or question.
    max_queries: Reads allowed there.
    messages: the chat messages (system, user).
    prompt_text: the messages rendered through the chat template.
    prompt_token_ids: `prompt_text` tokenized (no extra special tokens).
  """
  episode: int
  context_id: str
  step: int
  phase: str
  questions: tuple[str, ...]
  question_index: int | None
  chunk_index: int | None
  num_chunks: int
  chunk_text: str
  chunk_span: chunking.ChunkSpan | None
  document_indices: tuple[int, ...]
  scratchpad: str
  query: str
  retrieved: tuple[store_lib.Retrieved, ...]
  queries_used: int
  max_queries: int
  messages: tuple[Mapping[str, str], ...]
  prompt_text: str
  prompt_token_ids: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Turn:
  """One step of a trajectory: what the agent saw and what it did.

  `response_logprobs` holds the sampler's per-token log-probs of the response when the
  rollout passes them to `step`; None for scripted policies.
  """
  step: int
  phase: str
  prompt_messages: tuple[Mapping[str, str], ...]
  prompt_text: str
  prompt_token_ids: tuple[int, ...]
  response: str
  actions: tuple[Action, ...]
  problems: tuple[Problem, ...]
  response_logprobs: tuple[float, ...] | None = None


@dataclasses.dataclass(frozen=True)
class EpisodeResult:
  """Outcome of one episode; `reward` is the mean EM minus the store-size penalty."""
  context_id: str
  answers: tuple[str, ...]
  exact_match: tuple[float, ...]
  f1: tuple[float, ...]
  reward: float
  stats: stats_lib.EpisodeStats
  trajectory: tuple[Turn, ...]
  memories: tuple[store_lib.MemoryEntry, ...]


@dataclasses.dataclass
class _Episode:
  """Mutable state of one running episode."""
  index: int
  context: multihop.LongContext
  chunked: chunking.ChunkedContext
  store: store_lib.MemoryStore
  recorder: stats_lib.StatsRecorder
  answers: list[str | None]
  phase: str = READ_PHASE
  chunk_index: int = 0
  question_index: int = 0
  scratchpad: str = ""
  query: str = ""
  query_vector: np.ndarray | None = None
  shown: tuple[store_lib.Retrieved, ...] = ()
  queries_used: int = 0
  steps: int = 0
  done: bool = False
  observation: Observation | None = None
  turns: list[Turn] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Plan:
  """One response of one episode, parsed, with the Read decision taken."""
  response: str
  actions: tuple[Action, ...]
  problems: list[Problem]
  read_accepted: bool


class MemoryEnv:
  """Runs a batch of AtomMem episodes (see the module docstring for the rules).

  Args:
    config: episode settings.
    tokenizer: the policy's Hugging Face (fast) tokenizer: chunks, token budgets, prompts.
    embedder: embeds stored texts and queries (`memory.embed.Embedder`).
  """

  def __init__(self, config: EnvConfig, tokenizer, embedder: embed_lib.Embedder):
    self.config = config
    self.tokenizer = tokenizer
    self.embedder = embedder
    self.template = (prompts.PromptTemplate.load(config.prompt_template)
                     if config.prompt_template else prompts.PromptTemplate())
    self._episodes: list[_Episode] = []

  @property
  def done(self) -> list[bool]:
    return [episode.done for episode in self._episodes]

  def reset(self, contexts: Sequence[multihop.LongContext]) -> list[Observation]:
    """Starts one episode per context (each with an empty store); returns their prompts."""
    for context in contexts:
      if not context.questions:
        raise ValueError(f"context {context.id!r} has no questions; an episode needs at "
                         "least one question to answer")
    self._episodes = [self._new_episode(i, context) for i, context in enumerate(contexts)]
    for episode in self._episodes:
      if not episode.chunked.chunks:
        episode.phase = ANSWER_PHASE
    return self._observe()

  def step(self, responses: Sequence[str],
           response_logprobs: Sequence[Sequence[float] | None] | None = None
           ) -> list[Observation]:
    """Applies one response per active episode; returns the next prompts of active ones.

    Args:
      responses: one response per observation of the previous reset/step, in order.
      response_logprobs: optional per-response token log-probs, kept in the trajectory.
    """
    active = [episode for episode in self._episodes if not episode.done]
    if len(responses) != len(active):
      raise ValueError(f"step got {len(responses)} responses for {len(active)} active "
                       "episodes; pass one response per observation returned by the "
                       "previous reset/step, in the same order")
    if response_logprobs is not None and len(response_logprobs) != len(active):
      raise ValueError(f"step got {len(response_logprobs)} response_logprobs for "
                       f"{len(active)} active episodes")
    plans = [self._plan(episode, response) for episode, response in zip(active, responses)]
    document_vectors, query_vectors = self._embed(plans)
    for i, (episode, plan) in enumerate(zip(active, plans)):
      self._apply(episode, plan, document_vectors, query_vectors)
      logprobs = response_logprobs[i] if response_logprobs is not None else None
      self._record_turn(episode, plan, logprobs)
    return self._observe()

  def results(self) -> list[EpisodeResult]:
    """Per-episode outcome (also for episodes still running: unanswered questions are "")."""
    results = []
    for episode in self._episodes:
      answers = tuple(answer or "" for answer in episode.answers)
      golds = [question.answers for question in episode.context.questions]
      penalty = reward.store_size_penalty(len(episode.store), self.config.store_size_penalty,
                                          self.config.store_free_size)
      results.append(EpisodeResult(
          context_id=episode.context.id,
          answers=answers,
          exact_match=tuple(reward.exact_match(a, g) for a, g in zip(answers, golds)),
          f1=tuple(reward.f1_score(a, g) for a, g in zip(answers, golds)),
          reward=reward.context_reward(answers, golds) - penalty,
          stats=episode.recorder.freeze(),
          trajectory=tuple(episode.turns),
          memories=tuple(episode.store.entries())))
    return results

  def _new_episode(self, index: int, context: multihop.LongContext) -> _Episode:
    text, spans = _render_with_spans(context)
    chunked = chunking.chunk_text(
        text, self.tokenizer, chunk_tokens=self.config.chunk_tokens,
        overlap=self.config.chunk_overlap, max_chunks=self.config.max_chunks, segments=spans)
    return _Episode(
        index=index, context=context, chunked=chunked,
        store=store_lib.MemoryStore(self.embedder.dim, backend=self.config.store_backend,
                                    max_entries=self.config.max_store_entries),
        recorder=stats_lib.StatsRecorder(chunks=len(chunked.chunks),
                                         context_tokens=chunked.num_tokens,
                                         truncated_tokens=chunked.truncated_tokens),
        answers=[None] * len(context.questions))

  def _plan(self, episode: _Episode, response: str) -> _Plan:
    problems = []
    text = response
    if len(text) > self.config.max_response_chars:
      problems.append(Problem("oversized_response", f"response has {len(text)} characters; "
                              f"cut to max_response_chars={self.config.max_response_chars}"))
      text = text[:self.config.max_response_chars]
    parsed = parse_response(text, num_retrieved=len(episode.shown),
                            max_content_chars=self.config.max_content_chars,
                            allowed=self.config.allowed_actions(episode.phase))
    problems.extend(parsed.problems)
    has_read = any(action.kind is ActionKind.READ for action in parsed.actions)
    read_accepted = has_read and episode.queries_used < self.config.max_queries_per_question
    if has_read and not read_accepted:
      problems.append(Problem("query_limit", f"all {self.config.max_queries_per_question} "
                              f"queries of this {_position_name(episode.phase)} are used; "
                              "the query is ignored"))
    return _Plan(response, parsed.actions, problems, read_accepted)

  def _embed(self, plans: Sequence[_Plan]
             ) -> tuple[Iterator[np.ndarray], Iterator[np.ndarray]]:
    """Embeds every Create/Update text and every accepted query of the step.

    Returns iterators over the document vectors [D] and query vectors [D], in the order
    `_apply` consumes them (episode order, then action order).
    """
    documents = [action.text for plan in plans for action in plan.actions
                 if action.kind in (ActionKind.CREATE, ActionKind.UPDATE)]
    queries = [action.text for plan in plans if plan.read_accepted
               for action in plan.actions if action.kind is ActionKind.READ]
    dim = self.embedder.dim
    document_vectors = (self.embedder.embed_documents(documents) if documents
                        else np.zeros((0, dim), np.float32))
    query_vectors = (self.embedder.embed_queries(queries) if queries
                     else np.zeros((0, dim), np.float32))
    return iter(document_vectors), iter(query_vectors)

  def _apply(self, episode: _Episode, plan: _Plan, document_vectors: Iterator[np.ndarray],
             query_vectors: Iterator[np.ndarray]) -> None:
    """Applies one episode's planned actions, then moves it to its next position."""
    applied, invalid = episode.recorder.applied, episode.recorder.invalid
    answer = None
    for action in plan.actions:
      kind = action.kind
      if kind is ActionKind.SCRATCHPAD:
        episode.scratchpad = action.text
        applied["scratchpad"] += 1
      elif kind is ActionKind.READ and plan.read_accepted:
        episode.query, episode.query_vector = action.text, next(query_vectors)
        episode.queries_used += 1
        applied["read"] += 1
      elif kind is ActionKind.CREATE:
        vector = next(document_vectors)
        try:
          episode.store.create([action.text], vector[None])
          applied["create"] += 1
        except store_lib.StoreFullError as e:
          plan.problems.append(Problem("store_full", str(e)))
      elif kind is ActionKind.UPDATE:
        entry_id = episode.shown[action.memory_index - 1].id
        episode.store.update(entry_id, action.text, next(document_vectors))
        applied["update"] += 1
      elif kind is ActionKind.DELETE:
        episode.store.delete(episode.shown[action.memory_index - 1].id)
        applied["delete"] += 1
      elif kind is ActionKind.ANSWER:
        answer = action.text
    for problem in plan.problems:
      invalid[problem.kind] += 1
    if episode.phase == READ_PHASE:
      edits = any(action.kind in _STORE_EDITS for action in plan.actions)
      if edits or not plan.read_accepted:
        self._next_chunk(episode)
    elif answer is not None or not plan.read_accepted:
      if answer is None:
        answer = reward.extract_boxed(plan.response) or ""
      self._answer(episode, answer)
    episode.steps += 1
    episode.recorder.store_sizes.append(len(episode.store))
    if not episode.done and episode.steps >= self.config.step_limit:
      episode.done = True
      episode.recorder.hit_step_limit = True

  def _next_chunk(self, episode: _Episode) -> None:
    episode.chunk_index += 1
    episode.queries_used = 0
    if episode.chunk_index >= len(episode.chunked.chunks):
      episode.phase = ANSWER_PHASE

  def _answer(self, episode: _Episode, answer: str) -> None:
    episode.answers[episode.question_index] = answer
    episode.question_index += 1
    episode.queries_used = 0
    if episode.question_index >= len(episode.answers):
      episode.done = True

  def _record_turn(self, episode: _Episode, plan: _Plan,
                   logprobs: Sequence[float] | None) -> None:
    observation = episode.observation
    episode.turns.append(Turn(
        step=observation.step, phase=observation.phase,
        prompt_messages=observation.messages, prompt_text=observation.prompt_text,
        prompt_token_ids=observation.prompt_token_ids, response=plan.response,
        actions=plan.actions, problems=tuple(plan.problems),
        response_logprobs=tuple(logprobs) if logprobs is not None else None))

  def _observe(self) -> list[Observation]:
    """Builds the next prompt of every active episode (one batched tokenizer call)."""
    active = [episode for episode in self._episodes if not episode.done]
    drafts = [self._draft(episode) for episode in active]
    texts = [draft.prompt_text for draft in drafts]
    token_ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    observations = []
    for episode, draft, ids in zip(active, drafts, token_ids):
      episode.observation = dataclasses.replace(draft, prompt_token_ids=tuple(ids))
      episode.recorder.prompt_tokens.append(len(ids))
      observations.append(episode.observation)
    return observations

  def _draft(self, episode: _Episode) -> Observation:
    """The episode's next observation without token ids; refreshes its retrieval."""
    retrieved = []
    if episode.query_vector is not None and ActionKind.READ in self.config.enabled_actions:
      retrieved = episode.store.read(episode.query_vector[None], k=self.config.top_k)[0]
    memories, shown = prompts.format_memories([r.text for r in retrieved], self.tokenizer,
                                              self.config.max_retrieved_tokens)
    episode.shown = tuple(retrieved[:shown])
    reading = episode.phase == READ_PHASE
    chunk = episode.chunked.chunks[episode.chunk_index] if reading else None
    questions = tuple(question.question for question in episode.context.questions)
    inputs = prompts.PromptInputs(
        phase=episode.phase, questions=questions, scratchpad=episode.scratchpad,
        query=episode.query, memories=memories, chunk=chunk.text if chunk else "",
        chunk_index=episode.chunk_index if reading else None,
        num_chunks=len(episode.chunked.chunks),
        question_index=None if reading else episode.question_index,
        queries_used=episode.queries_used, max_queries=self.config.max_queries_per_question)
    messages = prompts.render_messages(self.template, inputs, self.config.enabled_actions)
    return Observation(
        episode=episode.index, context_id=episode.context.id, step=episode.steps,
        phase=episode.phase, questions=questions, question_index=inputs.question_index,
        chunk_index=inputs.chunk_index, num_chunks=inputs.num_chunks, chunk_text=inputs.chunk,
        chunk_span=chunk.span if chunk else None,
        document_indices=chunk.segments if chunk else (),
        scratchpad=episode.scratchpad, query=episode.query, retrieved=episode.shown,
        queries_used=episode.queries_used, max_queries=inputs.max_queries,
        messages=tuple(messages), prompt_text=prompts.render_prompt(self.tokenizer, messages),
        prompt_token_ids=())


def _position_name(phase: str) -> str:
  return "chunk" if phase == READ_PHASE else "question"


def _render_with_spans(context: multihop.LongContext) -> tuple[str, list[tuple[int, int]]]:
  """The rendered context and each document's [start, stop) character span in it.

  A document's span runs from the end of the previous document's text (so its header is
  included) to the end of its own text; spans are omitted if a text cannot be found.
  """
  text = multihop.render_context(context.documents)
  spans, cursor = [], 0
  for document in context.documents:
    found = text.find(document.text, cursor)
    if found < 0:
      return text, []
    spans.append((cursor, found + len(document.text)))
    cursor = found + len(document.text)
  return text, spans
