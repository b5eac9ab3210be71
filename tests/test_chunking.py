"""Token chunking: cores, overlaps and truncation checked against brute force on token ids."""

from __future__ import annotations

import functools

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import pytest

from atommem_jax.agent import chunking
from atommem_jax.data.tokenizer import load_tokenizer


@functools.lru_cache(maxsize=None)
def _tokenizer():
  return load_tokenizer()


def _long_text(num_sentences: int) -> str:
  return " ".join(f"Sentence {i} says that item {i * 7 % 13} is near caf\u00e9 {i}."
                  for i in range(num_sentences))


@settings(max_examples=300, deadline=None)
@given(num_tokens=st.integers(0, 400), chunk_tokens=st.integers(1, 60),
       overlap=st.integers(0, 30), max_chunks=st.integers(1, 12))
def test_spans_match_brute_force(num_tokens, chunk_tokens, overlap, max_chunks):
  spans, truncated = chunking.chunk_spans(num_tokens, chunk_tokens, overlap, max_chunks)
  kept = min(num_tokens, chunk_tokens * max_chunks)
  assert truncated == num_tokens - kept
  # Every kept token is in exactly one core: chunk p // C.
  for position in range(kept):
    owners = [i for i, s in enumerate(spans) if s.core_start <= position < s.core_stop]
    assert owners == [position // chunk_tokens]
  assert len(spans) == -(-kept // chunk_tokens)
  for i, span in enumerate(spans):
    in_view = [p for p in range(kept)
               if i * chunk_tokens - overlap <= p < (i + 1) * chunk_tokens + overlap]
    assert list(range(span.start, span.stop)) == in_view


def test_neighbours_share_exactly_overlap_tokens_each_side():
  tokenizer = _tokenizer()
  text = _long_text(60)
  token_ids = tokenizer.encode(text, add_special_tokens=False)
  chunk_tokens, overlap = 50, 7
  chunked = chunking.chunk_text(text, tokenizer, chunk_tokens=chunk_tokens, overlap=overlap,
                                max_chunks=1000)
  assert chunked.num_tokens == len(token_ids) and chunked.truncated_tokens == 0
  chunks = chunked.chunks
  assert len(chunks) == -(-len(token_ids) // chunk_tokens)
  for left, right in zip(chunks, chunks[1:]):
    boundary = right.span.core_start
    # The left view ends with `overlap` tokens of the right core (fewer only when the right
    # core is the short last one); the right view starts with `overlap` tokens of the left.
    shared = min(overlap, right.span.core_stop - boundary)
    assert left.span.stop - boundary == shared
    assert left.token_ids[-shared:] == tuple(token_ids[boundary:boundary + shared])
    assert right.token_ids[:overlap] == tuple(token_ids[boundary - overlap:boundary])
    assert left.token_ids[-(overlap + shared):] == right.token_ids[:overlap + shared]
  assert all(c.span.core_stop - c.span.core_start == chunk_tokens for c in chunks[:-1])
  assert chunks[-1].span.core_stop - chunks[-1].span.core_start < overlap  # the short case
  assert chunks[0].span.start == 0 and chunks[-1].span.stop == len(token_ids)
  cores = [t for c in chunks
           for t in c.token_ids[c.span.core_start - c.span.start:c.span.core_stop - c.span.start]]
  assert cores == token_ids
  for chunk in chunks:
    assert chunk.token_ids == tuple(token_ids[chunk.span.start:chunk.span.stop])
    assert chunk.text == tokenizer.decode(list(chunk.token_ids))


def test_truncation_keeps_head_and_counts_the_rest():
  tokenizer = _tokenizer()
  text = _long_text(40)
  token_ids = tokenizer.encode(text, add_special_tokens=False)
  chunked = chunking.chunk_text(text, tokenizer, chunk_tokens=40, overlap=5, max_chunks=3)
  assert len(chunked.chunks) == 3
  assert chunked.truncated_tokens == len(token_ids) - 120 > 0
  assert chunked.chunks[-1].span.stop == 120  # no overlap past the truncation point
  assert chunked.chunks[-1].token_ids == tuple(token_ids[75:120])


def test_short_and_empty_contexts():
  tokenizer = _tokenizer()
  text = "A short context."
  token_ids = tokenizer.encode(text, add_special_tokens=False)
  chunked = chunking.chunk_text(text, tokenizer, chunk_tokens=4000, overlap=100, max_chunks=40)
  assert len(chunked.chunks) == 1
  assert chunked.chunks[0].token_ids == tuple(token_ids)
  assert chunked.chunks[0].text == text
  assert chunked.chunks[0].char_span == (0, len(text))
  empty = chunking.chunk_text("", tokenizer, chunk_tokens=10, overlap=2, max_chunks=4)
  assert empty.chunks == () and empty.num_tokens == 0 and empty.truncated_tokens == 0


def test_segments_touched_by_each_view():
  tokenizer = _tokenizer()
  pieces = [f"Document {i}: entry number {i} is about the river {i * 3}.\n\n" for i in range(30)]
  text = "".join(pieces)
  segments, cursor = [], 0
  for piece in pieces:
    segments.append((cursor, cursor + len(piece)))
    cursor += len(piece)
  chunked = chunking.chunk_text(text, tokenizer, chunk_tokens=37, overlap=4, max_chunks=100,
                                segments=segments)
  for chunk in chunked.chunks:
    start, stop = chunk.char_span
    assert text[start:stop] == chunk.text
    expected = tuple(i for i, (a, b) in enumerate(segments) if a < stop and b > start)
    assert chunk.segments == expected


@pytest.mark.parametrize("kwargs", [dict(chunk_tokens=0, overlap=0, max_chunks=1),
                                    dict(chunk_tokens=5, overlap=-1, max_chunks=1),
                                    dict(chunk_tokens=5, overlap=0, max_chunks=0)])
def test_bad_sizes_raise(kwargs):
  with pytest.raises(ValueError, match="chunk"):
    chunking.chunk_spans(10, **kwargs)
