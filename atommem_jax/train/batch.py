"""`TrainBatch`, the token-level contract between rollouts/SFT data and the train steps.

Every field is [B, T] (B rows, T tokens per row):
  tokens        int32    token ids; padding is any id (it is masked out by segment_ids).
  positions     int32    RoPE positions, restarting at 0 for every packed sequence.
  segment_ids   int32    1, 2, ... numbers the sequences packed into a row; 0 = padding.
                         Tokens attend only within their own segment.
  loss_mask     float32  1 where the TARGET token tokens[t] is a response (assistant) token to
                         train, so the logit at t-1 predicts it. Never 1 at a sequence's first
                         token (it has no predecessor); the losses also ignore it there.
  old_logprobs  float32  log p_old(tokens[t]) where loss_mask is 1 (the sampler's per-token
                         log-probs of the sampled response; `steps.grpo_update` recomputes
                         them with the policy under grpo.old_logprobs="recompute"), 0 elsewhere.
  advantages    float32  per-token advantage where loss_mask is 1 (every token of every turn of
                         an episode carries the episode's advantage), 0 elsewhere.

So the shift lives in the log-probs the losses take: `model.logprobs.token_logprobs(...)[0]`
at t is log softmax(logits[:, t-1])[tokens[:, t]], aligned with `old_logprobs[:, t]`.

Builders turn (prompt_ids, response_ids, advantage, old_logprobs) examples into a batch: one
right-padded sequence per row (`pad_examples`), several per row (`pack_examples`, for SFT),
with T chosen from a few length buckets so that the steps compile rarely.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from atommem_jax.rollout.example import Example

_DTYPES = {"tokens": np.int32, "positions": np.int32, "segment_ids": np.int32,
           "loss_mask": np.float32, "old_logprobs": np.float32, "advantages": np.float32}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainBatch:
  """Token batch for `sft_step` / `grpo_step`; every field is [B, T] (see module docstring)."""

  tokens: jax.Array
  positions: jax.Array
  segment_ids: jax.Array
  loss_mask: jax.Array
  old_logprobs: jax.Array
  advantages: jax.Array

  @property
  def shape(self) -> tuple[int, int]:
    return tuple(self.tokens.shape)


def bucket_length(length: int, buckets: Sequence[int]) -> int:
  """Smallest bucket >= length, so that batches of similar lengths share one compilation."""
  fitting = [bucket for bucket in buckets if bucket >= length]
  if not fitting:
    raise ValueError(f"a sequence of {length} tokens exceeds the largest length bucket "
                     f"{max(buckets)}; add a larger bucket to the training config")
  return min(fitting)


def bucket_rows(rows: int, quantum: int) -> int:
  """Smallest count >= rows of the form quantum * m, m in 1, 2, 3, 4, 6, 8, 12, 16, 24, ...

  A GRPO batch has a row per turn of its episodes, so its row count changes from step to step;
  each new count compiles the update and the log-prob passes again (seconds each on a CPU,
  more than the step's compute at the demo's size). These counts pad under half of the rows
  (under a third from 3 quanta up) and leave a run only a few distinct shapes.
  """
  if rows < 0 or quantum < 1:
    raise ValueError(f"bucket_rows({rows}, {quantum}): rows must be >= 0 and quantum >= 1")
  need = -(-rows // quantum)
  power = 1 << max(need - 1, 0).bit_length()  # the smallest power of two >= need
  if power >= 4 and 3 * power // 4 >= need:
    return quantum * 3 * power // 4
  return quantum * power


def _checked(examples: Sequence[Example]) -> list[Example]:
  checked = []
  for index, example in enumerate(examples):
    example = Example(*example)
    if not len(example.prompt_ids):
      raise ValueError(f"example {index}: empty prompt_ids; the first response token needs a "
                       "preceding token to be predicted from (start it with the chat template)")
    if example.old_logprobs is not None and len(example.old_logprobs) != len(example.response_ids):
      raise ValueError(f"example {index}: {len(example.old_logprobs)} old_logprobs for "
                       f"{len(example.response_ids)} response tokens; give one per response "
                       "token (or None for SFT)")
    checked.append(example)
  return checked


def _length(example: Example) -> int:
  return len(example.prompt_ids) + len(example.response_ids)


def _empty(rows: int, length: int, pad_id: int) -> dict[str, np.ndarray]:
  arrays = {name: np.zeros((rows, length), dtype) for name, dtype in _DTYPES.items()}
  arrays["tokens"][:] = pad_id
  return arrays


def _place(arrays: dict[str, np.ndarray], row: int, start: int, segment: int,
           example: Example) -> None:
  prompt_len, response_len = len(example.prompt_ids), len(example.response_ids)
  end = start + prompt_len + response_len
  response = slice(start + prompt_len, end)
  arrays["tokens"][row, start:end] = list(example.prompt_ids) + list(example.response_ids)
  arrays["positions"][row, start:end] = np.arange(prompt_len + response_len)
  arrays["segment_ids"][row, start:end] = segment
  arrays["loss_mask"][row, response] = 1.0
  arrays["advantages"][row, response] = example.advantage
  if example.old_logprobs is not None:
    arrays["old_logprobs"][row, response] = example.old_logprobs


def _rows_needed(used: int, num_rows: int | None, row_multiple: int) -> int:
  if num_rows is not None:
    if used > num_rows:
      raise ValueError(f"the examples need {used} rows but num_rows={num_rows}; raise "
                       "num_rows or the row length")
    used = num_rows
  return max(row_multiple, -(-used // row_multiple) * row_multiple)


def pad_examples(examples: Sequence[Example], *, length: int | None = None,
                 buckets: Sequence[int] | None = None, pad_id: int = 0,
                 num_rows: int | None = None, row_multiple: int = 1) -> TrainBatch:
  """One example per row, right-padded to `length` (or the bucket of the longest example).

  Empty padding rows (segment 0) are added up to `num_rows` and to a multiple of
  `row_multiple` (e.g. the mesh's data x fsdp size).
  """
  examples = _checked(examples)
  length = _row_length(examples, length, buckets)
  arrays = _empty(_rows_needed(len(examples), num_rows, row_multiple), length, pad_id)
  for row, example in enumerate(examples):
    _place(arrays, row, 0, 1, example)
  return TrainBatch(**arrays)


def pack_examples(examples: Sequence[Example], *, length: int | None = None,
                  buckets: Sequence[int] | None = None, pad_id: int = 0,
                  num_rows: int | None = None, row_multiple: int = 1) -> TrainBatch:
  """Packs examples into rows of `length` tokens (first fit, longest first); SFT batching.

  Each example becomes one segment (ids 1, 2, ... within its row) with positions from 0.
  """
  examples = _checked(examples)
  length = _row_length(examples, length, buckets)
  order = sorted(range(len(examples)), key=lambda i: -_length(examples[i]))
  row_fill: list[int] = []
  row_items: list[list[int]] = []
  for index in order:
    need = _length(examples[index])
    row = next((r for r, fill in enumerate(row_fill) if fill + need <= length), None)
    if row is None:
      row_fill.append(0)
      row_items.append([])
      row = len(row_fill) - 1
    row_fill[row] += need
    row_items[row].append(index)
  arrays = _empty(_rows_needed(len(row_items), num_rows, row_multiple), length, pad_id)
  for row, items in enumerate(row_items):
    start = 0
    for segment, index in enumerate(sorted(items), start=1):
      _place(arrays, row, start, segment, examples[index])
      start += _length(examples[index])
  return TrainBatch(**arrays)


def _row_length(examples: Sequence[Example], length: int | None,
                buckets: Sequence[int] | None) -> int:
  longest = max((_length(example) for example in examples), default=1)
  if length is None:
    if buckets is None:
      raise ValueError("give the row length: length=... or buckets=[...]")
    return bucket_length(longest, buckets)
  if longest > length:
    raise ValueError(f"an example has {longest} tokens but rows hold length={length}; raise "
                     "the length (or add a larger bucket)")
  return length


def group_by_bucket(examples: Sequence[Example], buckets: Sequence[int]
                    ) -> dict[int, list[int]]:
  """Example indices grouped by the length bucket they fall in (bucket -> indices)."""
  groups: dict[int, list[int]] = {}
  for index, example in enumerate(_checked(examples)):
    groups.setdefault(bucket_length(_length(example), buckets), []).append(index)
  return dict(sorted(groups.items()))


def split_rows(batch: TrainBatch, num_splits: int) -> list[TrainBatch]:
  """Cuts a batch into `num_splits` consecutive row blocks of equal size (mini-batches)."""
  rows = batch.shape[0]
  if rows % num_splits:
    raise ValueError(f"cannot split a batch of {rows} rows into {num_splits} equal "
                     "mini-batches; make the row count a multiple of it")
  size = rows // num_splits
  return [jax.tree.map(lambda x, i=i: x[i * size:(i + 1) * size], batch)
          for i in range(num_splits)]


def take_rows(batch: TrainBatch, rows: np.ndarray) -> TrainBatch:
  """The batch restricted (and reordered) to the given row indices."""
  return jax.tree.map(lambda x: np.asarray(x)[rows], batch)
