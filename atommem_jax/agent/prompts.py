r"""Prompt text of the AtomMem agent: a system message and one user message per step.

A `PromptTemplate` has three parts, each a Python `str.format` string with `{slot}` fields
(write `{{` and `}}` for literal braces):

  system  the system message: the agent's role and its actions (built-in: {actions} only)
  read    the user message of a reading step
  answer  the user message of an answering step, after the last chunk

SLOTS (every part may use any of them; an unknown slot is an error at load time):
  actions            the enabled actions, one per line, each with its exact tag syntax
  questions          the questions of the context, numbered "1. ...", one per line
  scratchpad         the scratchpad text ("(empty)" when blank)
  query              the current retrieval query ("(none yet)" before the first Read)
  memories           the retrieved entries, "Memory 1: ...\nMemory 2: ...", cut to a token
                     budget ("(no memories)" when none)
  scratchpad_section "Scratchpad:\n{scratchpad}\n\n", or "" when the scratchpad is disabled
  memory_section     query, memories and the query count as one block, or "" when Read is
                     disabled
  chunk              the chunk text (read steps; "" in answer steps)
  chunk_number       1-based number of the chunk shown (read steps; 0 in answer steps)
  num_chunks         number of chunks of the context
  question           the question to answer now (answer steps; "" in read steps)
  question_number    its 1-based number (answer steps; 0 in read steps)
  num_questions      number of questions of the context
  queries_used       Reads used at this chunk (read) or for this question (answer)
  max_queries        Reads allowed there

A template file replaces the built-in parts it names: its lines `[system]`, `[read]` and
`[answer]` start a part (each at most once); a part runs to the next such line and is
stripped of surrounding blank lines. Text before the first marker is an error.
"""

from __future__ import annotations

import dataclasses
import string
from typing import Mapping, Sequence

from atommem_jax.agent.actions import ActionKind
from atommem_jax.data import tokenizer as tokenizer_lib

SLOTS = (
    "actions", "questions", "scratchpad", "query", "memories", "scratchpad_section",
    "memory_section", "chunk", "chunk_number", "num_chunks", "question", "question_number",
    "num_questions", "queries_used", "max_queries",
)
PARTS = ("system", "read", "answer")

_ACTION_LINES = {
    ActionKind.SCRATCHPAD: (
        "<update_memory>notes</update_memory>: replace your whole scratchpad with these notes."),
    ActionKind.READ: (
        "<update_query>query</update_query>: set the retrieval query. The memory entries it "
        "finds are shown at your next step as Memory 1, Memory 2, ... If this is your only "
        "memory action, you see the same chunk (or question) again with them."),
    ActionKind.CREATE: (
        "<add_memory>fact</add_memory>: store a new memory entry; use one tag per fact."),
    ActionKind.UPDATE: (
        "<modify_memory>Memory i: new text</modify_memory>: rewrite entry i of the memories "
        "shown to you now."),
    ActionKind.DELETE: (
        "<delete_memory>Memory i</delete_memory>: remove entry i of the memories shown to you "
        "now."),
    ActionKind.ANSWER: (
        "<final_answer>\\boxed{answer}</final_answer>: after the last chunk, answer the "
        "question you are asked with a short, exact answer."),
}

_SYSTEM = """\
You are a reading agent with memory. A long text is shown to you one chunk at a time and \
you cannot go back to earlier chunks, so keep what you need to answer the questions in \
your memory: a scratchpad of short notes that you rewrite as a whole, and a store of \
memory entries that you add, find again with a retrieval query, rewrite and delete.

Reply with actions written as tags; text outside the tags is ignored. Your actions:
{actions}"""

_READ = """\
Questions:
{questions}

{scratchpad_section}{memory_section}Chunk {chunk_number} of {num_chunks}:
{chunk}

Read this chunk and reply with your actions."""

_ANSWER = """\
Questions:
{questions}

{scratchpad_section}{memory_section}You have read all {num_chunks} chunks. Answer \
question {question_number} of {num_questions} now:
{question}

Reply with <final_answer>\\boxed{{your answer}}</final_answer>, or first look something up \
with a retrieval query."""

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
  """The prompt text the policy continues: the chat template with thinking off, if any.

  A tokenizer without a chat template (e.g. a small word-level one) gets plain role headers.
  """
  if getattr(tokenizer, "chat_template", None):
    return tokenizer_lib.render_chat(tokenizer, messages, add_generation_prompt=True,
                                     enable_thinking=False)
  turns = "".join(f"[{m['role']}]\n{m['content']}\n\n" for m in messages)
  return f"{turns}[assistant]\n"


def _slot_values(inputs: PromptInputs, enabled: frozenset[ActionKind]) -> dict[str, object]:
  reading = inputs.phase == "read"
  scratchpad = inputs.scratchpad or "(empty)"
  values = dict(
      actions=action_instructions(enabled),
      questions="\n".join(f"{i}. {q}" for i, q in enumerate(inputs.questions, start=1)),
      scratchpad=scratchpad,
      query=inputs.query or "(none yet)",
      memories=inputs.memories or "(no memories)",
      chunk=inputs.chunk if reading else "",
      chunk_number=inputs.chunk_index + 1 if reading else 0,
      num_chunks=inputs.num_chunks,
      question="" if reading else inputs.questions[inputs.question_index],
      question_number=0 if reading else inputs.question_index + 1,
      num_questions=len(inputs.questions),
      queries_used=inputs.queries_used,
      max_queries=inputs.max_queries,
  )
  values["scratchpad_section"] = (
      f"Scratchpad:\n{scratchpad}\n\n" if ActionKind.SCRATCHPAD in enabled else "")
  values["memory_section"] = (
      _MEMORY_SECTION.format(**values) if ActionKind.READ in enabled else "")
  return values
