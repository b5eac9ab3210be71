r"""Prompt text of the AtomMem agent: a system message and one user message per step.

The built-in prompt follows the structure of the official one (RUCBM/AtomMem,
recurrent/impls/memory_long_short_multiquery.py: SYSTEM_PROMPT, TEMPLATE_MEMORY with
STRATEGY_INJECTION_1, TEMPLATE_FINAL_BOXED) in our own words: a system message with the
operation reference and worked examples; a read step with the questions, the scratchpad, the
query and its memories, the chunk and a strategy block (how much to store, when the next
chunk comes, the query budget); an answer step with the one question to answer now.

A `PromptTemplate` has three parts, each a Python `str.format` string with `{slot}` fields
(write `{{` and `}}` for literal braces):

  system  the system message
  read    the user message of a reading step
  answer  the user message of an answering step, after the last chunk

SLOTS (every part may use any of them; an unknown slot is an error at load time):
  actions            the enabled actions, one per line, each with its exact tag syntax
  examples           worked examples of the enabled actions and of a whole response
  strategy           the read step's strategy block (store, next chunk, query budget)
  prompt             the questions one per line (read steps), or the question to answer now
                     (answer steps): the official templates' {prompt}
  questions          the questions of the context, numbered "1. ...", one per line
  scratchpad         the scratchpad text ("(empty)" when blank)
  short_memory       the scratchpad text as it is ("" when blank): the official slot
  query              the current retrieval query (a placeholder before the first Read)
  memories           the retrieved entries, "Memory 1: ...\nMemory 2: ...", cut to a token
                     budget ("(no memories)" when none); also named long_memory (official)
  long_memory        the same as memories
  scratchpad_section "Scratchpad:\n{scratchpad}\n\n", or "" when the scratchpad is disabled
  memory_section     query, memories and the query count as one block, or "" when Read is
                     disabled
  chunk              the chunk text (read steps; "" in answer steps)
  chunk_number       1-based number of the chunk shown (read steps; 0 in answer steps)
  num_chunks         number of chunks of the context
  question           the question to answer now (answer steps; "" in read steps)
  question_number    its 1-based number (answer steps; 0 in read steps)
  num_questions      number of questions of the context
  queries_used       Reads counted since the last memory edit or answer; also named
                     query_times (official)
  query_times        the same as queries_used
  max_queries        Reads allowed before one more skips the question

A template file replaces the built-in parts it names: its lines `[system]`, `[read]` and
`[answer]` start a part (each at most once); a part runs to the next such line and is
stripped of surrounding blank lines. Text before the first marker is an error. The
official prompt runs unchanged from such a file: SYSTEM_PROMPT as [system],
TEMPLATE_MEMORY + STRATEGY_INJECTION_1 as [read], TEMPLATE_FINAL_BOXED as [answer] (each
as the Python string's value, so `\\boxed{{}}` in the source is `\boxed{{}}` in the file).
"""

from __future__ import annotations

import dataclasses
import string
from typing import Mapping, Sequence

from atommem_jax.agent.actions import ActionKind
from atommem_jax.data import tokenizer as tokenizer_lib

SLOTS = (
    "actions", "examples", "strategy", "prompt", "questions", "scratchpad", "short_memory",
    "query", "memories", "long_memory", "scratchpad_section", "memory_section", "chunk",
    "chunk_number", "num_chunks", "question", "question_number", "num_questions",
    "queries_used", "query_times", "max_queries",
)
PARTS = ("system", "read", "answer")

_ACTION_LINES = {
    ActionKind.SCRATCHPAD: (
        "<update_memory>notes</update_memory>: replace your whole scratchpad (short-term "
        "memory) with these notes. Use it at every step."),
    ActionKind.READ: (
        "<update_query>query</update_query>: set the retrieval query. From your next step "
        "on, the store entries it finds are shown as Memory 1, Memory 2, ... Without a "
        "query of yours, a placeholder query is searched."),
    ActionKind.CREATE: (
        "<add_memory>fact</add_memory>: add a new entry to the store; use one tag per fact. "
        "Do not add again what is already shown to you."),
    ActionKind.UPDATE: (
        "<modify_memory>Memory i: new text</modify_memory>: rewrite entry i of the memories "
        "shown to you now. Prefer rewriting an entry to adding a near copy of it."),
    ActionKind.DELETE: (
        "<delete_memory>Memory i</delete_memory>: remove entry i of the memories shown to "
        "you now, e.g. a duplicate or an entry that turned out wrong."),
    ActionKind.ANSWER: (
        "<final_answer>\\boxed{answer}</final_answer>: after the last chunk, answer the "
        "question you are asked; only the text inside \\boxed{} counts."),
}

_ACTION_EXAMPLES = {
    ActionKind.READ: "<update_query>Anna Berg; violin teacher; Leipzig</update_query>",
    ActionKind.CREATE: (
        "<add_memory>The Leipzig conservatory hired Anna Berg as a violin teacher in 1921."
        "</add_memory>"),
    ActionKind.UPDATE: (
        "<modify_memory>Memory 2: Anna Berg taught violin in Leipzig from 1921 and moved to "
        "Dresden in 1930.</modify_memory>"),
    ActionKind.DELETE: (
        "Memory 4 repeats Memory 1, which is more complete: <delete_memory>Memory 4"
        "</delete_memory>"),
    ActionKind.ANSWER: "<final_answer>\\boxed{Dresden}</final_answer>",
}

_RESPONSE_EXAMPLE = {
    ActionKind.SCRATCHPAD: (
        "<update_memory>\n1. Where did Anna Berg teach last? She taught violin in Leipzig "
        "from 1921; this section says she moved to Dresden in 1930.\n2. Who founded the "
        "conservatory? Not found yet.\n</update_memory>"),
    ActionKind.READ: "<update_query>\nconservatory founder; Leipzig\n</update_query>",
    ActionKind.CREATE: (
        "<add_memory>\nThe Dresden orchestra gave its first concert in 1931, conducted by "
        "Paul Kern.\n</add_memory>"),
    ActionKind.UPDATE: (
        "<modify_memory>Memory 2: Anna Berg taught violin in Leipzig from 1921 and moved to "
        "Dresden in 1930.</modify_memory>"),
}

_SYSTEM = """\
You are given a long document one section at a time, together with questions about it, \
and you keep a memory so that you can answer the questions at the end. You cannot go \
back to an earlier section.

Your memory has two parts. The short-term memory (the scratchpad) is a summary that you \
rewrite at every step. The long-term memory is a store of entries that you change one \
entry at a time: the entries found by the current retrieval query are shown to you as \
Memory 1, Memory 2, ..., and only those can be rewritten or deleted.

Write each action as a pair of tags; one response may hold several actions, such as \
several new entries. Text outside the tags is not read. Your actions:
{actions}

{examples}"""

_READ = """\
The questions to answer:
{prompt}

{scratchpad_section}{memory_section}Section {chunk_number} of {num_chunks} of the document:
{chunk}

{strategy}"""

_ANSWER = """\
You have read all {num_chunks} sections. Answer this question from your memory:
{prompt}

{scratchpad_section}{memory_section}Write the answer alone, exactly, with no explanation: \
<final_answer>\\boxed{{your answer}}</final_answer>. If your memory does not show what you \
need, first set a retrieval query with <update_query>: its memories are shown at your next \
step, with this question again. Changing your memory is not needed any more.

{strategy}"""

_MEMORY_SECTION = """\
Retrieval query: {query}
Memories found by the query:
{memories}
Queries used here: {queries_used} of {max_queries}.

"""


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
  """The three prompt parts (see the module docstring for slots)."""
  system: str = _SYSTEM
  read: str = _READ
  answer: str = _ANSWER

  @classmethod
  def load(cls, path: str) -> PromptTemplate:
    """Reads a template file; parts it does not name keep the built-in text.

    Raises:
      ValueError: a line before the first part marker, a repeated part, or an unknown slot
        or malformed brace (the message names the file, line and slot).
    """
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
    parts: dict[str, list[str]] = {}
    starts: dict[str, int] = {}
    current = None
    for line_number, line in enumerate(lines, start=1):
      marker = line.strip()
      if marker.startswith("[") and marker.endswith("]") and marker[1:-1] in PARTS:
        current = marker[1:-1]
        if current in parts:
          raise ValueError(f"{path}:{line_number}: part [{current}] appears twice; keep one")
        parts[current], starts[current] = [], line_number + 1
      elif current is None:
        if marker:
          raise ValueError(f"{path}:{line_number}: text before the first part marker; start "
                           f"the file with one of {', '.join(f'[{p}]' for p in PARTS)}")
      else:
        parts[current].append(line)
    for part, part_lines in parts.items():
      _check_slots("\n".join(part_lines), f"{path}:{starts[part]} (part [{part}])")
    return cls(**{part: "\n".join(part_lines).strip("\n") for part, part_lines in parts.items()})


def _check_slots(text: str, where: str) -> None:
  try:
    fields = [field for _, field, _, _ in string.Formatter().parse(text) if field is not None]
  except ValueError as e:
    raise ValueError(f"{where}: malformed braces ({e}); write {{{{ and }}}} for literal "
                     "braces") from e
  for field in fields:
    if field not in SLOTS:
      raise ValueError(f"{where}: unknown slot {{{field}}}; the slots are {', '.join(SLOTS)}")


@dataclasses.dataclass(frozen=True)
class PromptInputs:
  """Everything one step's prompt shows (the environment fills it)."""
  phase: str  # "read" | "answer"
  questions: Sequence[str]
  scratchpad: str
  query: str
  memories: str  # already formatted with `format_memories`
  chunk: str
  chunk_index: int | None
  num_chunks: int
  question_index: int | None
  queries_used: int
  max_queries: int


def action_instructions(enabled: frozenset[ActionKind]) -> str:
  """One line per enabled action, in a fixed order, each with its exact tag syntax."""
  return "\n".join(f"- {_ACTION_LINES[kind]}" for kind in ActionKind if kind in enabled)


def action_examples(enabled: frozenset[ActionKind]) -> str:
  """Worked examples of the enabled actions, then a whole read-step response."""
  lines = [f"Example {i}: {_ACTION_EXAMPLES[kind]}" for i, kind in enumerate(
      (kind for kind in ActionKind if kind in enabled and kind in _ACTION_EXAMPLES), start=1)]
  response = [_RESPONSE_EXAMPLE[kind] for kind in ActionKind
              if kind in enabled and kind in _RESPONSE_EXAMPLE]
  return "\n".join(["Examples of single actions:"] + lines + ["", "Example of a response:"]
                   + response)


def strategy(phase: str, enabled: frozenset[ActionKind], queries_used: int,
             max_queries: int) -> str:
  """The strategy block of a read step, or the query rule of an answer step."""
  rules = []
  if phase == "read":
    if ActionKind.SCRATCHPAD in enabled and ActionKind.CREATE in enabled:
      rules.append("Keep the most important points in the scratchpad and the detailed, "
                   "broadly useful facts in the store, where a query finds them again.")
    if ActionKind.CREATE in enabled:
      rules.append("Store facts only, no reasoning or notes on your progress. Add several "
                   "entries for each section (five or six is a good number), also facts "
                   "that look unrelated now: a later question may need them.")
    if ActionKind.SCRATCHPAD in enabled:
      rules.append("With several questions, discuss each one under its own number in the "
                   "scratchpad.")
    moves = [f"<{kind.value}>" for kind in (ActionKind.CREATE, ActionKind.UPDATE)
             if kind in enabled]
    if moves:
      rules.append(f"The next section comes after a response with {' or '.join(moves)}; "
                   "after any other response you see this section again.")
  if ActionKind.READ in enabled:
    rules.append(f"You have used {queries_used} of {max_queries} queries since your last "
                 "memory change or answer. One more skips a question (at the last "
                 "question it ends the task): ask one composite query of keywords rather "
                 "than several.")
  if not rules:
    return ""
  header = "How to manage your memory:\n" if phase == "read" else ""
  return header + "\n".join(f"{i}) {rule}" for i, rule in enumerate(rules, start=1))


def format_memories(texts: Sequence[str], tokenizer, max_tokens: int) -> tuple[str, int]:
  """Formats retrieved texts as "Memory i: text" lines within `max_tokens` tokens.

  Returns:
    (text, shown): the formatted block and how many entries it shows, fully or cut; entries
    past the budget are left out, so "Memory i" with i > shown does not exist for the agent.
  """
  lines = [f"Memory {i}: {text}" for i, text in enumerate(texts, start=1)]
  block = "\n".join(lines)
  offsets = tokenizer(block, add_special_tokens=False,
                      return_offsets_mapping=True)["offset_mapping"]
  if len(offsets) <= max_tokens:
    return block, len(texts)
  cut = offsets[max_tokens - 1][1] if max_tokens > 0 else 0
  line_start = 0
  for shown, line in enumerate(lines):
    if line_start + len(f"Memory {shown + 1}: ") > cut:
      # This entry's "Memory i: " header does not fit: leave the entry out entirely.
      return block[:min(cut, max(line_start - 1, 0))], shown
    line_start += len(line) + 1
  return block[:cut], len(lines)


def render_messages(template: PromptTemplate, inputs: PromptInputs,
                    enabled: frozenset[ActionKind]) -> list[dict[str, str]]:
  """System + user chat messages of one step."""
  slots = _slot_values(inputs, enabled)
  user = template.read if inputs.phase == "read" else template.answer
  return [{"role": "system", "content": template.system.format(**slots)},
          {"role": "user", "content": user.format(**slots)}]


def render_prompt(tokenizer, messages: Sequence[Mapping[str, str]]) -> str:
  """The prompt text the policy continues: the chat template with thinking on, if any.

  Qwen3's template is applied without disabling thinking, as the official loop does: the
  policy opens its own `<think>` block (the parser drops it). A tokenizer without a chat
  template (e.g. a small word-level one) gets plain role headers.
  """
  if getattr(tokenizer, "chat_template", None):
    return tokenizer_lib.render_chat(tokenizer, messages, add_generation_prompt=True,
                                     enable_thinking=True)
  turns = "".join(f"[{m['role']}]\n{m['content']}\n\n" for m in messages)
  return f"{turns}[assistant]\n"


def _slot_values(inputs: PromptInputs, enabled: frozenset[ActionKind]) -> dict[str, object]:
  reading = inputs.phase == "read"
  scratchpad = inputs.scratchpad or "(empty)"
  question = "" if reading else inputs.questions[inputs.question_index]
  values = dict(
      actions=action_instructions(enabled),
      examples=action_examples(enabled),
      strategy=strategy(inputs.phase, enabled, inputs.queries_used, inputs.max_queries),
      prompt="\n".join(inputs.questions) if reading else question,
      questions="\n".join(f"{i}. {q}" for i, q in enumerate(inputs.questions, start=1)),
      scratchpad=scratchpad,
      short_memory=inputs.scratchpad,
      query=inputs.query,
      memories=inputs.memories or "(no memories)",
      chunk=inputs.chunk if reading else "",
      chunk_number=inputs.chunk_index + 1 if reading else 0,
      num_chunks=inputs.num_chunks,
      question=question,
      question_number=0 if reading else inputs.question_index + 1,
      num_questions=len(inputs.questions),
      queries_used=inputs.queries_used,
      max_queries=inputs.max_queries,
  )
  values["long_memory"] = values["memories"]
  values["query_times"] = values["queries_used"]
  values["scratchpad_section"] = (
      f"Scratchpad:\n{scratchpad}\n\n" if ActionKind.SCRATCHPAD in enabled else "")
  values["memory_section"] = (
      _MEMORY_SECTION.format(**values) if ActionKind.READ in enabled else "")
  return values
