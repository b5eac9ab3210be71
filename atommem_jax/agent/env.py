r"""The AtomMem episode environment: a host-side state machine over a batch of episodes.

An episode reads one `LongContext` chunk by chunk ("read" phase), then answers its questions
one per turn ("answer" phase). Every step shows the agent its question(s), scratchpad,
current retrieval query, the memories that query finds now, and the current chunk (or the
question to answer); the agent replies with tagged actions (`agent.actions`).

The rules are those of the official loop (RUCBM/AtomMem,
recurrent/impls/memory_long_short_multiquery.py; docs/protocol.md lists the rules, the
reference lines and the deviations we keep on purpose):
- Retrieval every step: the latest query (`initial_query`, a placeholder, until the first
  Read) is searched over the episode's own store whenever a prompt is built, so memories
  show from the first step and edits show up at once. A Read sets the query for the next
  prompt. "Memory i" in a response means entry i of the retrieval shown in the prompt that
  response answers; all its actions use that mapping.
- Actions apply in response order. Every memory edit (scratchpad rewrite, Create, Update,
  Delete) and every answer resets the query count; a Read with `max_queries_per_question`
  Reads already counted is refused ("query_limit") and skips a question instead: the next
  question becomes current (in the read phase too: that question is never asked), or, at
  the last question, the episode ends.
- Read phase: the next chunk comes after a response with a Create or an Update, or one
  with no valid action at all (the reference means to move on there; a missing metrics key
  makes it stay in the published runs). A response with only a scratchpad rewrite, Reads
  or Deletes shows the same chunk again. Without Create and Update (ablations), every
  response moves on. After the last chunk the answer phase starts.
- Answer phase: the prompt shows the current question only; store edits still run; a
  `<final_answer>` records the answer (its `\boxed{}` content; "" without one, which scores
  0) and moves to the next question; a turn with neither an answer nor a refused Read asks
  the same question again.
- Episode length: at most `max_chunks + 1` turns, reading and answering together (or
  `max_steps`); unanswered questions score 0.
- Invalid actions (parser problems, disabled actions, "query_limit", "store_full") are never
  applied and are counted in the episode's stats.
- Prompt budget: a prompt over `max_prompt_tokens` is cut, least needed part first: shown
  memories, oldest entry first; then the scratchpad's head; then the chunk's tail; last,
  the prompt's head. Cuts are counted in the stats.

Batching: `reset` and `step` return one `Observation` per episode that is not done, in
episode order, and `step` takes exactly one response per observation of the previous call,
in the same order. All texts to embed in one `step` (Create/Update texts of every episode)
go in one `embed_documents` call and all accepted queries in one `embed_queries` call. A
response is cut to `max_response_chars` before it is parsed; nothing reads the rest.
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
INITIAL_QUERY = "(none yet)"  # the placeholder query (the reference: "defult query, change it!")
# Edits that reset the query count (the reference's _handle_update/_add/_modify/_delete).
_MEMORY_EDITS = frozenset({ActionKind.SCRATCHPAD, ActionKind.CREATE, ActionKind.UPDATE,
                           ActionKind.DELETE})
# Store writes after which the next chunk comes (the reference's move_on).
_MOVE_ON = frozenset({ActionKind.CREATE, ActionKind.UPDATE})


@dataclasses.dataclass(frozen=True)
class EnvConfig:
  """Episode settings (defaults: the paper's; the `enable_` booleans are ablation switches).

  The fields are the config's env section (`config_lib.env_config`), so they follow its
  conventions: 0 is "no limit" and "" "the built-in template". A bad value raises
  ValueError("FIELD=VALUE: what is expected"), which the config names as `env.FIELD`.

  Attributes:
    chunk_tokens: core tokens per chunk.
    chunk_overlap: tokens shown from each neighbouring chunk.
    max_chunks: chunks read at most; longer contexts are truncated (counted in the stats).
    top_k: memories retrieved per query.
    max_retrieved_tokens: token budget of the retrieved memories in a prompt.
    max_queries_per_question: Reads allowed between two memory edits or answers (the
      reference's limit of 3); one more skips a question.
    max_steps: turns per episode at most; 0 means max_chunks + 1 (the reference's).
    max_response_chars: a longer response is cut to this before parsing.
    max_content_chars: an action's content longer than this is invalid; 0 keeps any.
    max_prompt_tokens: a longer prompt is cut (module docstring); the episode loop lowers
      it to its largest prompt bucket.
    initial_query: the query searched before the first Read.
    enable_scratchpad: allow `<update_memory>`.
    enable_store: use the long-term store at all (False with enable_scratchpad True:
      MemAgent-style).
    enable_create, enable_read, enable_update, enable_delete: allow each store action (only
      with `enable_store`).
    max_store_entries: store capacity (0: none); a Create beyond it is invalid ("store_full").
    store_size_penalty: reward penalty per store entry beyond `store_free_size` at the end.
    store_free_size: entries that cost nothing.
    prompt_template: path of a template file (`prompts.PromptTemplate.load`); "": the
      built-in one.
    store_backend: "scann" or "exact".
  """
  chunk_tokens: int = 4000
  chunk_overlap: int = 100
  max_chunks: int = 40
  top_k: int = 6
  max_retrieved_tokens: int = 4096
  max_queries_per_question: int = 3
  max_steps: int = 0
  max_response_chars: int = 32768
  max_content_chars: int = 0
  max_prompt_tokens: int = 16384
  initial_query: str = INITIAL_QUERY
  enable_scratchpad: bool = True
  enable_store: bool = True
  enable_create: bool = True
  enable_read: bool = True
  enable_update: bool = True
  enable_delete: bool = True
  max_store_entries: int = 0
  store_size_penalty: float = 0.0
  store_free_size: int = 0
  prompt_template: str = ""
  store_backend: str = "scann"

  def __post_init__(self):
    def check(ok: bool, name: str, expected: str):
      if not ok:
        raise ValueError(f"{name}={getattr(self, name)!r}: {expected}")
    for name in ("chunk_tokens", "max_chunks", "top_k", "max_retrieved_tokens",
                 "max_response_chars", "max_prompt_tokens"):
      check(getattr(self, name) >= 1, name, ">= 1")
    for name in ("chunk_overlap", "max_queries_per_question", "store_free_size",
                 "store_size_penalty"):
      check(getattr(self, name) >= 0, name, ">= 0")
    for name in ("max_steps", "max_content_chars", "max_store_entries"):
      check(getattr(self, name) >= 0, name, ">= 0 (0: no limit)")
    check(bool(self.initial_query.strip()), "initial_query",
          "the text searched before the first Read, not empty")
    check(self.store_backend in store_lib.BACKENDS, "store_backend",
          f"one of {store_lib.BACKENDS}")

  @property
  def step_limit(self) -> int:
    return self.max_steps or self.max_chunks + 1

  @property
  def enabled_actions(self) -> frozenset[ActionKind]:
    """Every action kind the agent may use in some phase."""
    kinds = {ActionKind.ANSWER}
    if self.enable_scratchpad:
      kinds.add(ActionKind.SCRATCHPAD)
    if self.enable_store:
      switches = ((self.enable_create, ActionKind.CREATE), (self.enable_read, ActionKind.READ),
                  (self.enable_update, ActionKind.UPDATE),
                  (self.enable_delete, ActionKind.DELETE))
      kinds.update(kind for enabled, kind in switches if enabled)
    return frozenset(kinds)

  def allowed_actions(self, phase: str) -> frozenset[ActionKind]:
    """Action kinds accepted in `phase` ("read": all but ANSWER; "answer": all)."""
    if phase == READ_PHASE:
      return self.enabled_actions - {ActionKind.ANSWER}
    return self.enabled_actions


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
    chunk_text: the chunk shown ("" in the answer phase; its tail may be cut to the budget).
    chunk_span: its token positions in the context, or None.
    document_indices: indices of the context documents the chunk touches.
    scratchpad: the scratchpad text.
    query: the current retrieval query (`EnvConfig.initial_query` before the first Read).
    retrieved: the memories shown as Memory 1..k (ids are the stable store ids).
    queries_used: Reads counted since the last memory edit or answer.
    max_queries: Reads allowed before one more skips the question.
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
  """Outcome of one episode; `reward` is the mean EM minus the store-size penalty.

  `answers` holds "" for a question never answered, skipped, or answered outside
  `\\boxed{}`; all of those score 0.
  """
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
  answers: list[str | None]  # None: not answered, skipped, or answered outside \boxed{}
  query: str
  query_vector: np.ndarray
  phase: str = READ_PHASE
  chunk_index: int = 0
  question_index: int = 0
  scratchpad: str = ""
  shown: tuple[store_lib.Retrieved, ...] = ()
  queries_used: int = 0
  steps: int = 0
  done: bool = False
  observation: Observation | None = None
  turns: list[Turn] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Plan:
  """One response of one episode, parsed, with each Read's fate decided."""
  response: str
  actions: tuple[Action, ...]
  problems: list[Problem]
  read_accepted: list[bool]  # per READ action, in order: False skips a question
  moves_on: bool  # read phase: the next chunk comes after this response


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
    self._initial_query_vector: np.ndarray | None = None

  @property
  def done(self) -> list[bool]:
    return [episode.done for episode in self._episodes]

  def reset(self, contexts: Sequence[multihop.LongContext]) -> list[Observation]:
    """Starts one episode per context (each with an empty store); returns their prompts."""
    for context in contexts:
      if not context.questions:
        raise ValueError(f"context {context.id!r} has no questions; an episode needs at "
                         "least one question to answer")
    if self._initial_query_vector is None and contexts:
      self._initial_query_vector = self.embedder.embed_queries([self.config.initial_query])[0]
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
      golds = [question.answers for question in episode.context.questions]
      penalty = reward.store_size_penalty(len(episode.store), self.config.store_size_penalty,
                                          self.config.store_free_size)
      results.append(EpisodeResult(
          context_id=episode.context.id,
          answers=tuple(answer or "" for answer in episode.answers),
          exact_match=tuple(reward.exact_match(a, g) for a, g in zip(episode.answers, golds)),
          f1=tuple(reward.f1_score(a, g) for a, g in zip(episode.answers, golds)),
          reward=reward.context_reward(episode.answers, golds) - penalty,
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
                                    max_entries=self.config.max_store_entries or None),
        recorder=stats_lib.StatsRecorder(chunks=len(chunked.chunks),
                                         context_tokens=chunked.num_tokens,
                                         truncated_tokens=chunked.truncated_tokens),
        answers=[None] * len(context.questions), query=self.config.initial_query,
        query_vector=self._initial_query_vector)

  def _plan(self, episode: _Episode, response: str) -> _Plan:
    """Parses the kept part of a response and decides each Read, in response order."""
    problems = []
    text = response
    if len(text) > self.config.max_response_chars:
      problems.append(Problem("oversized_response", f"response has {len(text)} characters; "
                              f"cut to max_response_chars={self.config.max_response_chars}"))
      text = text[:self.config.max_response_chars]
    parsed = parse_response(text, num_retrieved=len(episode.shown),
                            max_content_chars=self.config.max_content_chars or None,
                            allowed=self.config.allowed_actions(episode.phase))
    problems.extend(parsed.problems)
    limit = self.config.max_queries_per_question
    queries_used, read_accepted = episode.queries_used, []
    for action in parsed.actions:
      if action.kind in _MEMORY_EDITS or action.kind is ActionKind.ANSWER:
        queries_used = 0
      elif action.kind is ActionKind.READ:
        read_accepted.append(queries_used < limit)
        queries_used = queries_used + 1 if read_accepted[-1] else 0
        if not read_accepted[-1]:
          problems.append(Problem("query_limit", f"a Read after {limit} Reads without a "
                                  "memory edit or answer: the question is skipped"))
    kinds = {action.kind for action in parsed.actions}
    moves_on = (bool(kinds & _MOVE_ON) or not kinds
                or not self.config.enabled_actions & _MOVE_ON)
    return _Plan(text, parsed.actions, problems, read_accepted, moves_on)

  def _embed(self, plans: Sequence[_Plan]
             ) -> tuple[Iterator[np.ndarray], Iterator[np.ndarray]]:
    """Embeds every Create/Update text and every accepted query of the step.

    Returns iterators over the document vectors [D] and query vectors [D], in the order
    `_apply` consumes them (episode order, then action order).
    """
    documents = [action.text for plan in plans for action in plan.actions
                 if action.kind in (ActionKind.CREATE, ActionKind.UPDATE)]
    queries = []
    for plan in plans:
      reads = [action for action in plan.actions if action.kind is ActionKind.READ]
      queries += [read.text for read, accepted in zip(reads, plan.read_accepted) if accepted]
    dim = self.embedder.dim
    document_vectors = (self.embedder.embed_documents(documents) if documents
                        else np.zeros((0, dim), np.float32))
    query_vectors = (self.embedder.embed_queries(queries) if queries
                     else np.zeros((0, dim), np.float32))
    return iter(document_vectors), iter(query_vectors)

  def _apply(self, episode: _Episode, plan: _Plan, document_vectors: Iterator[np.ndarray],
             query_vectors: Iterator[np.ndarray]) -> None:
    """Applies one episode's actions in order, then moves it to its next position."""
    applied, invalid = episode.recorder.applied, episode.recorder.invalid
    read_accepted = iter(plan.read_accepted)
    for action in plan.actions:
      kind = action.kind
      if kind in _MEMORY_EDITS:
        episode.queries_used = 0
      if kind is ActionKind.SCRATCHPAD:
        episode.scratchpad = action.text
        applied["scratchpad"] += 1
      elif kind is ActionKind.READ:
        if next(read_accepted):
          episode.query, episode.query_vector = action.text, next(query_vectors)
          episode.queries_used += 1
          applied["read"] += 1
        elif not episode.done:
          episode.recorder.questions_skipped += 1
          self._next_question(episode, None)
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
      elif kind is ActionKind.ANSWER and not episode.done:
        self._next_question(episode, action.text or None)
    for problem in plan.problems:
      invalid[problem.kind] += 1
    if episode.phase == READ_PHASE and plan.moves_on:
      episode.chunk_index += 1
      if episode.chunk_index >= len(episode.chunked.chunks):
        episode.phase = ANSWER_PHASE
    episode.steps += 1
    episode.recorder.store_sizes.append(len(episode.store))
    if not episode.done and episode.steps >= self.config.step_limit:
      episode.done = True
      episode.recorder.hit_step_limit = True

  def _next_question(self, episode: _Episode, answer: str | None) -> None:
    """Records `answer` for the current question (None: skipped) and moves past it."""
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
    """Builds the next prompt of every active episode (one batched tokenizer call), cut to
    `max_prompt_tokens` where needed."""
    active = [episode for episode in self._episodes if not episode.done]
    retrieved = [self._retrieve(episode) for episode in active]
    drafts = [self._draft(episode, candidates, episode.scratchpad, None)
              for episode, candidates in zip(active, retrieved)]
    texts = [draft.prompt_text for draft, _ in drafts]
    token_ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    observations = []
    for episode, candidates, (draft, shown), ids in zip(active, retrieved, drafts, token_ids):
      observation = dataclasses.replace(draft, prompt_token_ids=tuple(ids))
      if len(ids) > self.config.max_prompt_tokens:
        observation, shown = self._fit(episode, candidates, observation)
      episode.observation, episode.shown = observation, shown
      episode.recorder.prompt_tokens.append(len(observation.prompt_token_ids))
      observations.append(observation)
    return observations

  def _retrieve(self, episode: _Episode) -> list[store_lib.Retrieved]:
    """The memories the episode's query finds now (none when Read is disabled)."""
    if ActionKind.READ not in self.config.enabled_actions or not len(episode.store):
      return []
    return episode.store.read(episode.query_vector[None], k=self.config.top_k)[0]

  def _fit(self, episode: _Episode, candidates: Sequence[store_lib.Retrieved],
           observation: Observation) -> tuple[Observation, tuple[store_lib.Retrieved, ...]]:
    """Cuts an over-budget prompt: oldest shown memories, then the scratchpad's head, then
    the chunk's tail, then the prompt's head; counts the cut in the episode's stats."""
    budget = self.config.max_prompt_tokens
    recorder = episode.recorder
    recorder.prompt_cuts += 1
    candidates = list(candidates)
    scratchpad, chunk = observation.scratchpad, observation.chunk_text
    shown = observation.retrieved

    def render():
      draft, shown = self._draft(episode, candidates, scratchpad, chunk)
      ids = self.tokenizer(draft.prompt_text, add_special_tokens=False)["input_ids"]
      return dataclasses.replace(draft, prompt_token_ids=tuple(ids)), shown

    while len(observation.prompt_token_ids) > budget and shown:
      oldest = min(shown, key=lambda memory: memory.id)
      candidates.remove(oldest)
      recorder.memories_cut += 1
      observation, shown = render()
    for part in ("scratchpad", "chunk"):
      while len(observation.prompt_token_ids) > budget:
        text = scratchpad if part == "scratchpad" else chunk
        length = len(observation.prompt_token_ids)
        if not text:
          break
        text = _drop_tokens(self.tokenizer, text, length - budget,
                            from_start=part == "scratchpad")
        scratchpad, chunk = (text, chunk) if part == "scratchpad" else (scratchpad, text)
        observation, shown = render()
        if len(observation.prompt_token_ids) >= length:
          break  # the template does not show this part
    if len(observation.prompt_token_ids) > budget:
      ids = observation.prompt_token_ids[-budget:]
      observation = dataclasses.replace(
          observation, prompt_token_ids=ids,
          prompt_text=self.tokenizer.decode(list(ids), skip_special_tokens=False,
                                            clean_up_tokenization_spaces=False))
    return observation, shown

  def _draft(self, episode: _Episode, candidates: Sequence[store_lib.Retrieved],
             scratchpad: str, chunk_text: str | None
             ) -> tuple[Observation, tuple[store_lib.Retrieved, ...]]:
    """The episode's next observation without token ids, and the memories it shows.

    `chunk_text` None shows the whole current chunk; a string replaces it (a cut chunk).
    """
    memories, count = prompts.format_memories([r.text for r in candidates], self.tokenizer,
                                              self.config.max_retrieved_tokens)
    shown = tuple(candidates[:count])
    reading = episode.phase == READ_PHASE
    chunk = episode.chunked.chunks[episode.chunk_index] if reading else None
    if chunk_text is None:
      chunk_text = chunk.text if chunk else ""
    questions = tuple(question.question for question in episode.context.questions)
    inputs = prompts.PromptInputs(
        phase=episode.phase, questions=questions, scratchpad=scratchpad,
        query=episode.query, memories=memories, chunk=chunk_text,
        chunk_index=episode.chunk_index if reading else None,
        num_chunks=len(episode.chunked.chunks),
        question_index=None if reading else episode.question_index,
        queries_used=episode.queries_used, max_queries=self.config.max_queries_per_question)
    messages = prompts.render_messages(self.template, inputs, self.config.enabled_actions)
    return Observation(
        episode=episode.index, context_id=episode.context.id, step=episode.steps,
        phase=episode.phase, questions=questions, question_index=inputs.question_index,
        chunk_index=inputs.chunk_index, num_chunks=inputs.num_chunks, chunk_text=chunk_text,
        chunk_span=chunk.span if chunk else None,
        document_indices=chunk.segments if chunk else (),
        scratchpad=scratchpad, query=episode.query, retrieved=shown,
        queries_used=episode.queries_used, max_queries=inputs.max_queries,
        messages=tuple(messages), prompt_text=prompts.render_prompt(self.tokenizer, messages),
        prompt_token_ids=()), shown


def _drop_tokens(tokenizer, text: str, count: int, *, from_start: bool) -> str:
  """`text` without its first (or last) `count` tokens (at least one character less)."""
  offsets = tokenizer(text, add_special_tokens=False,
                      return_offsets_mapping=True)["offset_mapping"]
  if count >= len(offsets):
    return ""
  if from_start:
    return text[max(offsets[count][0], 1):]
  return text[:min(offsets[len(offsets) - count][0], len(text) - 1)]


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
