"""Token chunking of a long context: fixed cores plus overlap with both neighbours.

Chunk i of a context of n tokens owns the core tokens [i * C, (i + 1) * C) and also shows
O tokens of each neighbour, so its view is [i * C - O, (i + 1) * C + O) clipped to the
(truncated) context. Neighbouring views therefore share exactly 2 * O tokens: the last O
core tokens of chunk i and the first O core tokens of chunk i + 1. A fact that straddles a
core boundary and is at most 2 * O tokens long is whole in at least one view.
At most `max_chunks` cores are kept: tokens past max_chunks * C are dropped (the head is
kept) and counted in `truncated_tokens`.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class ChunkSpan:
  """Token positions of one chunk in the context: view [start, stop), core [core_start, core_stop)."""
  start: int
  core_start: int
  core_stop: int
  stop: int


@dataclasses.dataclass(frozen=True)
class Chunk:
  """One chunk as shown to the agent.

  Attributes:
    index: 0-based chunk number.
    span: token positions of the view and the core in the context's token ids.
    token_ids: the view's token ids (overlap included).
    text: the view decoded back to text.
    char_span: [start, stop) character positions of the view in the source text.
    segments: indices of the source segments (documents) the view touches, ascending.
  """
  index: int
  span: ChunkSpan
  token_ids: tuple[int, ...]
  text: str
  char_span: tuple[int, int]
  segments: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class ChunkedContext:
  """A context cut into chunks; `num_tokens` counts the tokens before truncation."""
  chunks: tuple[Chunk, ...]
  num_tokens: int
  truncated_tokens: int


def chunk_spans(num_tokens: int, chunk_tokens: int, overlap: int,
                max_chunks: int) -> tuple[list[ChunkSpan], int]:
  """Chunk positions for a context of `num_tokens` tokens.

  Returns:
    (spans, truncated_tokens): one span per chunk (none for an empty context) and the
    number of tokens past the last kept core.

  Raises:
    ValueError: a size is out of range.
  """
  if chunk_tokens <= 0 or overlap < 0 or max_chunks <= 0 or num_tokens < 0:
    raise ValueError(
        f"chunking needs chunk_tokens > 0, overlap >= 0, max_chunks > 0 and num_tokens >= 0; "
        f"got chunk_tokens={chunk_tokens}, overlap={overlap}, max_chunks={max_chunks}, "
        f"num_tokens={num_tokens}")
  kept = min(num_tokens, chunk_tokens * max_chunks)
  spans = []
  for core_start in range(0, kept, chunk_tokens):
    core_stop = min(core_start + chunk_tokens, kept)
    spans.append(ChunkSpan(start=max(core_start - overlap, 0), core_start=core_start,
                           core_stop=core_stop, stop=min(core_stop + overlap, kept)))
  return spans, num_tokens - kept


def chunk_text(text: str, tokenizer, *, chunk_tokens: int, overlap: int, max_chunks: int,
               segments: Sequence[tuple[int, int]] = ()) -> ChunkedContext:
  """Tokenizes `text` with `tokenizer` (no special tokens) and cuts it into chunks.

  Args:
    text: the rendered context.
    tokenizer: a Hugging Face fast tokenizer (offsets are used to map tokens to characters).
    chunk_tokens: core tokens per chunk (C).
    overlap: tokens shown from each neighbour (O).
    max_chunks: chunks kept at most.
    segments: optional [start, stop) character spans of the documents in `text`; each chunk
      lists the ones its view touches.
  """
  encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
  token_ids = list(encoding["input_ids"])
  offsets = encoding["offset_mapping"]
  spans, truncated = chunk_spans(len(token_ids), chunk_tokens, overlap, max_chunks)
  segment_starts = [start for start, _ in segments]
  chunks = []
  for index, span in enumerate(spans):
    char_span = (offsets[span.start][0], offsets[span.stop - 1][1])
    view_ids = tuple(token_ids[span.start:span.stop])
    chunks.append(Chunk(
        index=index, span=span, token_ids=view_ids,
        text=tokenizer.decode(view_ids, skip_special_tokens=False),
        char_span=char_span,
        segments=_touched_segments(segments, segment_starts, char_span)))
  return ChunkedContext(chunks=tuple(chunks), num_tokens=len(token_ids), truncated_tokens=truncated)


def _touched_segments(segments: Sequence[tuple[int, int]], segment_starts: list[int],
                      char_span: tuple[int, int]) -> tuple[int, ...]:
  """Indices of the (start-sorted, disjoint) segments that intersect `char_span`."""
  start, stop = char_span
  first = max(bisect.bisect_right(segment_starts, start) - 1, 0)
  touched = []
  for index in range(first, len(segments)):
    segment_start, segment_stop = segments[index]
    if segment_start >= stop:
      break
    if segment_stop > start:
      touched.append(index)
  return tuple(touched)
