"""SFT examples of the job (oracle trajectories, repeat-the-text spans, a chat-message file)
and the order of their batches.

Contexts are loaded by `train.contexts`, the synthetic tokenizer trained by
`train.tokenizer_training`. Every order is a pure function of (seed, step), so that a resumed
run sees the same data as an uninterrupted one: `sft_batch_indices(num_examples, batch_size,
seed, step)` shuffles once per epoch with a key folded from (seed, epoch).
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

import numpy as np

from atommem_jax import fileio
from atommem_jax.agent import env as env_lib
from atommem_jax.agent import oracle
from atommem_jax.agent import prompts
from atommem_jax.data import multihop
from atommem_jax.train.batch import Example


def oracle_examples(contexts: Sequence[multihop.LongContext], env_config: env_lib.EnvConfig,
                    tokenizer, embedder, oracle_options: Mapping[str, bool] | None = None,
                    decoy_share: float = 0.0) -> tuple[list[Example], float]:
  """SFT examples (one per step, response ended by EOS) of the oracle, and its mean reward.

  `oracle_options`: keyword arguments of `oracle.OraclePolicy` (`boxed_space`: how it writes
  its answers). `decoy_share`: share of the contexts whose episode starts from a wrong memory
  (`oracle.OraclePolicy`'s decoy_share); the steps that wrote the decoys are left out, the
  oracle's repair of them is taught.
  """
  env = env_lib.MemoryEnv(env_config, tokenizer, embedder)
  policy = oracle.OraclePolicy(enabled=env_config.enabled_actions, decoy_share=decoy_share,
                               **(oracle_options or {}))
  results = oracle.run_episodes(env, policy, contexts)
  eos = tokenizer.eos_token_id
  examples = []
  for episode, result in enumerate(results):
    decoy_steps = policy.decoy_steps(episode)
    for turn in result.trajectory:
      if turn.step in decoy_steps:
        continue
      examples.append(Example(turn.prompt_token_ids,
                              tokenizer.encode(turn.response, add_special_tokens=False) + [eos]))
  return examples, float(np.mean([result.reward for result in results]))


def copy_examples(contexts: Sequence[multihop.LongContext], tokenizer, span_tokens: int,
                  seeds: Sequence[int]) -> list[Example]:
  """Repeat-the-text examples, one per context and seed (seed by seed, contexts in order): a
  random span of `span_tokens` tokens of the rendered context as the prompt, the same span
  again (then EOS) as the response.

  Every response token is predictable only by finding where the prompt said it: the
  copy-from-context skill (an induction head) that the memory actions need, given a dense
  signal. The span starts at a random token (each seed its own generator, drawn in context
  order), so every document position is shown. Each context is tokenized once.
  """
  if span_tokens < 1:
    raise ValueError(f"copy_examples: span_tokens={span_tokens}; give a length >= 1")
  eos = tokenizer.eos_token_id
  rendered = [tokenizer.encode(multihop.render_context(context.documents),
                               add_special_tokens=False) for context in contexts] if seeds else []
  examples = []
  for seed in seeds:
    rng = np.random.default_rng(seed)
    for ids in rendered:
      start = int(rng.integers(0, max(len(ids) - span_tokens, 0) + 1))
      span = ids[start:start + span_tokens]
      examples.append(Example(span, span + [eos]))
  return examples


def file_examples(path: str, tokenizer) -> list[Example]:
  """SFT examples from a JSON-lines file (local or a URL), one example per line, in either
  format:
  - chat messages, as TRL and the official SFT scripts write them (and `atommem_jax.collect`):
    {"messages": [{"role": "system", "content": ...}, {"role": "user", ...}, ...,
    {"role": "assistant", "content": ...}]}: the prompt is every message before the last,
    rendered as the environment renders its prompts (`prompts.render_prompt`), and the
    response is the last (assistant) message, thinking text included, then EOS;
  - rendered texts: {"prompt": ..., "completion": ...}.
  A bad line raises DataError naming the file, line and field.
  """
  if not fileio.isfile(path):
    raise multihop.DataError(f"config field data.sft_file={path!r}: no such file; give JSON "
                             "lines of chat messages ({\"messages\": [...]})")
  examples = []
  for line_number, raw in enumerate(fileio.read_bytes(path).splitlines(), start=1):
    where = f"{path}:{line_number}"
    record = multihop.parse_json_line(raw, where)
    if record is multihop.BLANK:
      continue
    if isinstance(record, dict) and "messages" in record:
      prompt = prompts.render_prompt(tokenizer, _chat_prompt(record["messages"], where))
      completion = record["messages"][-1]["content"]
    elif isinstance(record, dict) and isinstance(record.get("prompt"), str) and isinstance(
        record.get("completion"), str):
      prompt, completion = record["prompt"], record["completion"]
    else:
      raise multihop.DataError(f"{where}: expected a JSON object with 'messages' (chat "
                               "format) or 'prompt' and 'completion' strings, got "
                               f"{json.dumps(record)[:80]}")
    response = tokenizer.encode(completion, add_special_tokens=False)
    if not response or response[-1] != tokenizer.eos_token_id:
      response.append(tokenizer.eos_token_id)
    examples.append(Example(tokenizer.encode(prompt, add_special_tokens=False), response))
  if not examples:
    raise multihop.DataError(f"{path}: no examples; give JSON lines of chat messages")
  return examples


_ROLES = ("system", "user", "assistant")


def _chat_prompt(messages, where: str) -> list[dict[str, str]]:
  """The prompt messages of one chat row (all but the final assistant message), checked."""
  if not isinstance(messages, list) or len(messages) < 2:
    raise multihop.DataError(f"{where}: field 'messages' should be a list of at least a user "
                             f"and an assistant message, got {json.dumps(messages)[:80]}")
  for i, message in enumerate(messages):
    if not (isinstance(message, dict) and message.get("role") in _ROLES
            and isinstance(message.get("content"), str)):
      raise multihop.DataError(
          f"{where}: field 'messages[{i}]' should be {{\"role\": one of {list(_ROLES)}, "
          f"\"content\": a string}}, got {json.dumps(message)[:80]}")
  roles = [message["role"] for message in messages]
  if roles[-1] != "assistant" or "assistant" in roles[:-1] or "user" not in roles:
    raise multihop.DataError(
        f"{where}: field 'messages' has roles {roles}; one example is user (and system) "
        "messages then one final assistant message: write one line per assistant turn")
  return [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]


def sft_batch_indices(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
  """Example indices of SFT step `step` (0-based): epochs of a (seed, epoch) permutation."""
  per_epoch = max(num_examples // batch_size, 1)
  epoch, position = divmod(step, per_epoch)
  order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  return order[position * batch_size:(position + 1) * batch_size]
