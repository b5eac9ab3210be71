r"""AtomMem's action grammar: tagged CRUD actions in a model response, parsed and rendered.

A response carries actions as paired tags (the tag names of the released AtomMem
checkpoints, so they run unchanged):

  <update_memory>text</update_memory>            SCRATCHPAD: rewrite the scratchpad
  <update_query>text</update_query>              READ: retrieval query, answered next step
  <add_memory>text</add_memory>                  CREATE: a new store entry (several allowed)
  <modify_memory>Memory i: text</modify_memory>  UPDATE: rewrite entry i of the last retrieval
  <delete_memory>Memory i</delete_memory>        DELETE: remove entry i of the last retrieval
  <final_answer>\boxed{answer}</final_answer>    ANSWER

Rules (model output is untrusted: `parse_response` never raises; whatever is not applied
is reported as a `Problem`). Parsing is linear in the length of the response.
- Text outside action tags is ignored. Reasoning is removed first: every
  `<think>...</think>` block, and everything before a leading `</think>` (the chat template
  opened the block in the prompt). An unclosed `<think>` hides the rest of the response.
- Tag names are case-insensitive. An opening tag may carry attributes
  (`<add_memory id="3">`), as the reference parser's `<(\w+)[^>]*>` allows; a closing tag is
  bare. Outside action content, a tag with another name is reported as "unknown_tag";
  inside action content it is plain text.
- An action opened inside another action ("nested_tag") is dropped with its container. An
  action never closed ("unclosed_tag") is dropped; actions inside it still count.
- Content is stripped of surrounding whitespace; empty content ("empty_content") is dropped,
  and so is content longer than `max_content_chars` ("oversized_content") when a limit is
  given (None, the default, keeps any length, as the reference does).
- "Memory i" (case-insensitive, 1-based) numbers the entries of the last retrieval shown;
  i outside 1..num_retrieved is "memory_index_out_of_range", a malformed reference is
  "bad_memory_ref". DELETE ignores text after "Memory i", as the reference parser does.
- SCRATCHPAD and READ actions are all kept, in order: the environment applies them one after
  another as the reference loop does (the last text stays, every Read counts against the
  query budget). ANSWER is one per response: the LAST one is kept
  ("duplicate_single_action"). UPDATE/DELETE of an entry already targeted earlier in the
  response is dropped: the first edit wins ("conflicting_memory_ref").
- An action whose kind is not in `allowed` (ablations, or a phase that forbids it) is
  dropped ("disabled_action").
- ANSWER text is the content of the last balanced `\boxed{...}`. An ANSWER is never dropped
  for its content: without a box its text is empty ("missing_boxed"; an answer outside
  `\boxed{}` scores 0, as in the reference reward), and an empty box is reported as
  "empty_content".
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import re
import sys
from typing import Sequence

from atommem_jax.agent.reward import extract_boxed


class ActionKind(enum.Enum):
  """Kinds of action; the value is the tag name."""

  SCRATCHPAD = "update_memory"
  READ = "update_query"
  CREATE = "add_memory"
  UPDATE = "modify_memory"
  DELETE = "delete_memory"
  ANSWER = "final_answer"


ALL_KINDS = frozenset(ActionKind)
# Kinds of which one per response counts (the last).
SINGLE_KINDS = frozenset({ActionKind.ANSWER})
PROBLEM_KINDS = (
    "unknown_tag", "unclosed_tag", "stray_close_tag", "nested_tag", "disabled_action",
    "empty_content", "oversized_content", "bad_memory_ref", "memory_index_out_of_range",
    "conflicting_memory_ref", "duplicate_single_action", "missing_boxed",
)


@dataclasses.dataclass(frozen=True)
class Action:
  kind: ActionKind
  text: str = ""
  memory_index: int | None = None  # 1-based into the last retrieval; UPDATE/DELETE only


@dataclasses.dataclass(frozen=True)
class Problem:
  kind: str  # one of PROBLEM_KINDS
  detail: str


@dataclasses.dataclass(frozen=True)
class ParsedResponse:
  actions: tuple[Action, ...]  # in response order, each valid and allowed
  problems: tuple[Problem, ...]


_KIND_BY_TAG = {kind.value: kind for kind in ActionKind}
# A tag: "<name>", "<name attributes>" or "</name>". Attributes stop at the next "<", so that
# a "<" without ">" is scanned once, whatever follows.
_TAG = re.compile(r"<(/?)([A-Za-z_]\w*)(\s[^<>]*)?>")
_THINK = re.compile(r"<(/?)think>", re.IGNORECASE)
_UPDATE_REF = re.compile(r"memory\s*(\d+)\s*:(.*)\Z", re.IGNORECASE | re.DOTALL)
_DELETE_REF = re.compile(r"memory\s*(\d+)\b", re.IGNORECASE)
_MAX_INDEX_DIGITS = 9  # longer numbers are out of range anyway; int() of huge ones raises


@dataclasses.dataclass
class _Element:
  """A tagged span opened in the response; `parent` is the element open around it (or -1)."""

  kind: ActionKind
  ordinal: int  # 1 for the first opening tag of this kind in the response, 2 for the next...
  content_start: int
  parent: int
  closed: bool = False
  content: str = ""
  children: list[_Element] = dataclasses.field(default_factory=list)


def parse_response(text: str, *, num_retrieved: int, max_content_chars: int | None = None,
                   allowed: frozenset[ActionKind] = ALL_KINDS) -> ParsedResponse:
  """Parses the actions of one model response; total: never raises for any string."""
  problems: list[Problem] = []
  text = _strip_reasoning(text, problems)
  candidates = []
  for element in _tagged_elements(text, problems):
    tag = f"<{element.kind.value}> #{element.ordinal}"
    if element.children:
      inner = ", ".join(f"<{child.kind.value}>" for child in element.children[:5])
      if len(element.children) > 5:
        inner += f" and {len(element.children) - 5} more"
      problems.append(Problem("nested_tag", f"{tag} contains {inner}; all are dropped"))
    elif element.kind not in allowed:
      problems.append(Problem("disabled_action", f"{tag}: this action is disabled here"))
    else:
      action = _to_action(element, tag, num_retrieved, max_content_chars, problems)
      if action is not None:
        candidates.append((tag, action))
  return ParsedResponse(_deduplicate(candidates, problems), tuple(problems))


def render_actions(actions: Sequence[Action], *, boxed_space: bool = False) -> str:
  r"""Canonical text of `actions`, one per line.

  For a valid sequence (at most one SCRATCHPAD/READ/ANSWER, distinct UPDATE/DELETE
  indices) `parse_response(render_actions(a), ...).actions == tuple(a)`. Raises ValueError
  for an action that would not parse back to itself (e.g. text with action tags in it).
  `boxed_space`: an ANSWER is written `\boxed{ text}`, with a space that parsing strips again
  (for a BPE whose words carry their leading space: the answer is then the same token as
  the word in a memory sentence).
  """
  pieces = []
  for action in actions:
    piece = _render_one(action, boxed_space)
    reparsed = parse_response(piece, num_retrieved=action.memory_index or 0,
                              max_content_chars=sys.maxsize)
    if reparsed.actions != (action,) or reparsed.problems:
      found = "; ".join(f"{p.kind}: {p.detail}" for p in reparsed.problems)
      raise ValueError(f"cannot render {action!r}: it would parse back as "
                       f"{reparsed.actions!r} ({found or 'no problems'}); use stripped, "
                       "non-empty text without action tags, and memory_index >= 1 exactly "
                       "for UPDATE/DELETE")
    pieces.append(piece)
  return "\n".join(pieces)


def _render_one(action: Action, boxed_space: bool) -> str:
  tag = action.kind.value
  if action.kind is ActionKind.UPDATE:
    body = f"Memory {action.memory_index}: {action.text}"
  elif action.kind is ActionKind.DELETE:
    body = f"Memory {action.memory_index}"
  elif action.kind is ActionKind.ANSWER:
    body = f"\\boxed{{{' ' if boxed_space else ''}{action.text}}}"
  else:
    body = action.text
  return f"<{tag}>{body}</{tag}>"


def _strip_reasoning(text: str, problems: list[Problem]) -> str:
  """Removes `<think>` blocks (and a prompt-opened one ending at a leading `</think>`)."""
  kept = []
  position = 0
  inside = False
  for index, match in enumerate(_THINK.finditer(text)):
    is_close = match.group(1) == "/"
    if index == 0 and is_close:
      position = match.end()
    elif not inside and not is_close:
      kept.append(text[position:match.start()])
      inside = True
    elif inside and is_close:
      position = match.end()
      inside = False
    elif not inside:
      problems.append(Problem("stray_close_tag", "</think> closes no <think>; ignored"))
      kept.append(text[position:match.start()])
      position = match.end()
  if inside:
    problems.append(Problem("unclosed_tag", "<think> is never closed; the text after it "
                            "is treated as reasoning and ignored"))
  else:
    kept.append(text[position:])
  return "".join(kept)


def _tagged_elements(text: str, problems: list[Problem]) -> list[_Element]:
  """Matches action tags with a stack; returns the closed top-level elements in order.

  Linear: each kind keeps the stack positions of its open elements, so a closing tag finds
  its element in O(1); an abandoned (unclosed) element hands its closed children to the
  nearest enclosing element that closes, found in one pass over the elements afterwards.
  """
  elements: list[_Element] = []
  stack: list[int] = []  # indices into `elements`
  open_at: dict[ActionKind, list[int]] = collections.defaultdict(list)  # stack positions
  opened = collections.Counter()

  def abandon_innermost() -> None:
    element = elements[stack.pop()]
    open_at[element.kind].pop()
    problems.append(Problem("unclosed_tag", f"<{element.kind.value}> #{element.ordinal} "
                            "is never closed; dropped"))

  for match in _TAG.finditer(text):
    is_close, name = match.group(1) == "/", match.group(2).lower()
    kind = _KIND_BY_TAG.get(name)
    if kind is None or (is_close and match.group(3) is not None):
      if not stack:
        problems.append(Problem("unknown_tag", f"{match.group(0)[:80]} is not an action tag; "
                                "ignored"))
      continue
    if not is_close:
      opened[kind] += 1
      open_at[kind].append(len(stack))
      stack.append(len(elements))
      elements.append(_Element(kind, opened[kind], match.end(), stack[-2] if len(stack) > 1
                               else -1))
      continue
    if not open_at[kind]:
      problems.append(Problem("stray_close_tag", f"{match.group(0)} closes no open tag; "
                              "ignored"))
      continue
    depth = open_at[kind][-1]
    while len(stack) > depth + 1:
      abandon_innermost()
    element = elements[stack.pop()]
    open_at[kind].pop()
    element.closed = True
    element.content = text[element.content_start:match.start()]
  while stack:
    abandon_innermost()
  # Parents open before their children: one pass in opening order resolves, for each
  # element, the nearest enclosing element that closed (-1: none, it is top level).
  container = [-1] * len(elements)
  top_level = []
  for index, element in enumerate(elements):
    parent = element.parent
    if parent >= 0:
      container[index] = parent if elements[parent].closed else container[parent]
    if element.closed:
      if container[index] < 0:
        top_level.append(element)
      else:
        elements[container[index]].children.append(element)
  return top_level


def _to_action(element: _Element, tag: str, num_retrieved: int, max_content_chars: int | None,
               problems: list[Problem]) -> Action | None:
  """Validates one element's content; reports and returns None when it is unusable."""
  kind = element.kind
  content = element.content.strip()
  memory_index = None
  if kind is ActionKind.UPDATE:
    match = _UPDATE_REF.match(content)
    if match is None:
      problems.append(Problem("bad_memory_ref", f"{tag}: expected 'Memory i: new text', "
                              f"got {content[:80]!r}"))
      return None
    memory_index = _memory_index(match.group(1), tag, num_retrieved, problems)
    if memory_index is None:
      return None
    content = match.group(2).strip()
  elif kind is ActionKind.DELETE:
    match = _DELETE_REF.match(content)
    if match is None:
      problems.append(Problem("bad_memory_ref", f"{tag}: expected 'Memory i', "
                              f"got {content[:80]!r}"))
      return None
    memory_index = _memory_index(match.group(1), tag, num_retrieved, problems)
    if memory_index is None:
      return None
    content = ""
  elif kind is ActionKind.ANSWER:
    boxed = extract_boxed(content)
    if boxed is None:
      problems.append(Problem("missing_boxed", f"{tag}: no \\boxed{{...}}; an answer "
                              "outside \\boxed{} scores 0"))
    elif not boxed:
      problems.append(Problem("empty_content", f"{tag} has an empty \\boxed{{}}"))
    return Action(kind, boxed or "")
  if not content and kind is not ActionKind.DELETE:
    problems.append(Problem("empty_content", f"{tag} has no content; dropped"))
    return None
  if max_content_chars is not None and len(content) > max_content_chars:
    problems.append(Problem("oversized_content", f"{tag} has {len(content)} characters, "
                            f"over the limit of {max_content_chars}; dropped"))
    return None
  return Action(kind, content, memory_index)


def _memory_index(digits: str, tag: str, num_retrieved: int,
                  problems: list[Problem]) -> int | None:
  """The 1-based index in `digits`, or None (after reporting) when it is out of range."""
  index = int(digits) if len(digits) <= _MAX_INDEX_DIGITS else 0
  if 1 <= index <= num_retrieved:
    return index
  problems.append(Problem("memory_index_out_of_range", f"{tag}: Memory {digits[:20]} but "
                          f"the last retrieval showed {num_retrieved} entries (1-based)"))
  return None


def _deduplicate(candidates: list[tuple[str, Action]],
                 problems: list[Problem]) -> tuple[Action, ...]:
  """Keeps the last answer and the first edit of each memory entry."""
  last_single = {action.kind: i for i, (_, action) in enumerate(candidates)
                 if action.kind in SINGLE_KINDS}
  edited: dict[int, str] = {}
  kept = []
  for i, (tag, action) in enumerate(candidates):
    if action.kind in SINGLE_KINDS and last_single[action.kind] != i:
      problems.append(Problem("duplicate_single_action", f"{tag} is replaced by a later "
                              f"<{action.kind.value}>; only the last one is kept"))
    elif action.memory_index is not None and action.memory_index in edited:
      problems.append(Problem("conflicting_memory_ref", f"{tag}: Memory "
                              f"{action.memory_index} is already edited by "
                              f"{edited[action.memory_index]}; dropped"))
    else:
      if action.memory_index is not None:
        edited[action.memory_index] = tag
      kept.append(action)
  return tuple(kept)
