"""The episode environment: scripted responses give exactly the expected transitions."""

from __future__ import annotations

import pathlib
import re
import time

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import pytest

from atommem_jax.agent import env as env_lib
from atommem_jax.agent import oracle
from atommem_jax.agent import prompts
from atommem_jax.agent.actions import parse_response
from atommem_jax.data import synthetic
from atommem_jax.memory.embed import HashingEmbedder
import _contexts


_tokenizer = _contexts.tokenizer
_context = _contexts.context


def _env(embedder=None, **overrides) -> env_lib.MemoryEnv:
  config = dict(chunk_tokens=24, chunk_overlap=4, store_backend="exact")
  config.update(overrides)
  return env_lib.MemoryEnv(env_lib.EnvConfig(**config), _tokenizer(),
                           embedder or HashingEmbedder(256))


def _shown_memories(observation) -> dict[str, int]:
  """Memory text -> i as printed in the user prompt (read from the text, not the fields)."""
  user = observation.messages[1]["content"]
  return {text: int(i) for i, text in re.findall(r"^Memory (\d+): (.*)$", user, re.MULTILINE)}


def _entry_ids(env: env_lib.MemoryEnv) -> dict[str, int]:
  return {entry.text: entry.id for entry in env.results()[0].memories}


def test_read_sets_the_query_of_the_next_prompt_and_reshows_the_chunk():
  env = _env()
  [first] = env.reset([_context()])
  assert first.phase == "read" and first.chunk_index == 0 and first.num_chunks > 3
  assert first.query == env.config.initial_query and first.retrieved == ()
  [second] = env.step(["<add_memory>The tower of Place 0 is old.</add_memory>"])
  # The placeholder query already finds the new entry; the Create moved on.
  assert second.chunk_index == 1 and _shown_memories(second) == {
      "The tower of Place 0 is old.": 1}
  [third] = env.step(["<update_memory>notes</update_memory>"
                      "<update_query>tower of Place 0</update_query>"])
  # The query issued at step 1 is searched in step 2's prompt, which shows the same chunk.
  assert third.chunk_index == 1 and third.chunk_text == second.chunk_text
  assert third.query == "tower of Place 0" and third.scratchpad == "notes"
  assert [r.text for r in third.retrieved] == ["The tower of Place 0 is old."]
  assert third.queries_used == 1 and "Queries used here: 1 of 3." in third.prompt_text
  # A Create moves on and resets the query count; the query persists.
  [fourth] = env.step(["<add_memory>Place 1 has three bridges.</add_memory>"])
  assert fourth.chunk_index == 2 and fourth.queries_used == 0
  assert fourth.query == "tower of Place 0"
  assert set(_shown_memories(fourth)) == {"The tower of Place 0 is old.",
                                          "Place 1 has three bridges."}


def test_update_and_delete_map_memory_i_to_stable_ids():
  env = _env()
  env.reset([_context()])
  env.step(["<add_memory>alpha river one</add_memory><add_memory>beta river two</add_memory>"
            "<add_memory>gamma river three</add_memory>"])
  ids_before = _entry_ids(env)
  assert sorted(ids_before.values()) == [0, 1, 2]
  [observation] = env.step(["<update_query>river</update_query>"])
  shown = _shown_memories(observation)
  assert set(shown) == set(ids_before)
  beta, gamma = shown["beta river two"], shown["gamma river three"]
  [after] = env.step([f"<modify_memory>Memory {beta}: beta river changed</modify_memory>"
                      f"<delete_memory>Memory {gamma}</delete_memory>"
                      "<add_memory>delta river four</add_memory>"])
  ids_after = _entry_ids(env)
  assert ids_after == {"alpha river one": ids_before["alpha river one"],
                       "beta river changed": ids_before["beta river two"],
                       "delta river four": 3}
  # The next prompt's list is fresh: delete the entry now shown as alpha, and twice.
  alpha = _shown_memories(after)["alpha river one"]
  env.step([f"<delete_memory>Memory {alpha}</delete_memory>"
            f"<delete_memory>Memory {alpha}</delete_memory>"])
  result = env.results()[0]
  assert set(_entry_ids(env)) == {"beta river changed", "delta river four"}
  assert result.stats.deletes == 2 and result.stats.updates == 1 and result.stats.creates == 4
  assert result.stats.invalid == {"conflicting_memory_ref": 1}


def test_invalid_actions_are_counted_and_not_applied():
  env = _env(max_store_entries=2)
  env.reset([_context()])
  env.step(["<add_memory>one</add_memory><add_memory>two</add_memory>"
            "<add_memory>three</add_memory><delete_memory>Memory 1</delete_memory>"])
  result = env.results()[0]
  assert [entry.text for entry in result.memories] == ["one", "two"]
  assert result.stats.invalid == {"store_full": 1, "memory_index_out_of_range": 1}
  assert result.stats.creates == 2 and result.stats.deletes == 0
  env.step(["<final_answer>\\boxed{x}</final_answer><modify_memory>Memory 3: a"
            "</modify_memory><bogus>"])
  result = env.results()[0]
  assert result.stats.invalid == {"store_full": 1, "memory_index_out_of_range": 2,
                                  "disabled_action": 1, "unknown_tag": 1}
  assert result.answers == ("",) and len(result.memories) == 2
  turn = result.trajectory[-1]
  assert turn.actions == () and {p.kind for p in turn.problems} == {
      "memory_index_out_of_range", "disabled_action", "unknown_tag"}


def test_step_guard_ends_runaway_episodes():
  env = _env(max_steps=3)
  env.reset([_context(questions=(("a?", "x"), ("b?", "y")))])
  for _ in range(2):
    assert len(env.step(["<update_memory>thinking</update_memory>"])) == 1
  assert env.step(["<update_memory>thinking</update_memory>"]) == []
  result = env.results()[0]
  assert result.answers == ("", "") and result.reward == 0.0
  assert result.stats.hit_step_limit and result.stats.steps == 3


@pytest.mark.parametrize("switch, tag", [("update", "modify_memory"),
                                         ("delete", "delete_memory"),
                                         ("create", "add_memory"),
                                         ("scratchpad", "update_memory")])
def test_disabled_operation_is_rejected_and_absent_from_instructions(switch, tag):
  env = _env(**{f"enable_{switch}": False})
  [observation] = env.reset([_context()])
  assert f"<{tag}>" not in observation.messages[0]["content"]
  enabled = [t for t in ("update_memory", "update_query", "add_memory", "modify_memory",
                         "delete_memory", "final_answer") if t != tag]
  assert all(f"<{t}>" in observation.messages[0]["content"] for t in enabled)
  env.step(["<add_memory>kept fact</add_memory>"] if switch != "create" else [""])
  env.step(["<update_query>kept fact</update_query>"])
  content = {"modify_memory": "Memory 1: new", "delete_memory": "Memory 1"}.get(tag, "text")
  env.step([f"<{tag}>{content}</{tag}>"])
  result = env.results()[0]
  assert result.stats.invalid == {"disabled_action": 1}
  expected = [] if switch == "create" else ["kept fact"]
  assert [entry.text for entry in result.memories] == expected


def test_memagent_configuration_has_no_store():
  env = _env(enable_store=False)
  [observation] = env.reset([_context()])
  user = observation.messages[1]["content"]
  assert "Retrieval query" not in user and "Scratchpad:\n(empty)" in user
  assert "<update_query>" not in observation.messages[0]["content"]
  [observation] = env.step(["<update_memory>fact A</update_memory>"
                            "<add_memory>x</add_memory><update_query>q</update_query>"])
  assert observation.chunk_index == 1 and observation.scratchpad == "fact A"
  assert env.results()[0].stats.invalid == {"disabled_action": 2}


def test_stats_and_prompt_rendering_match_the_tokenizer():
  tokenizer = _tokenizer()
  env = _env()
  [observation] = env.reset([_context()])
  expected_text = tokenizer.apply_chat_template(
      list(observation.messages), tokenize=False, add_generation_prompt=True,
      enable_thinking=True)
  assert observation.prompt_text == expected_text
  assert list(observation.prompt_token_ids) == tokenizer.encode(expected_text,
                                                                add_special_tokens=False)
  responses = ["<add_memory>a</add_memory><add_memory>b</add_memory>",
               "<update_memory>s</update_memory><update_query>a</update_query>",
               "<delete_memory>Memory 1</delete_memory>"]
  prompt_lengths = [len(observation.prompt_token_ids)]
  for response in responses:
    [observation] = env.step([response])
    prompt_lengths.append(len(observation.prompt_token_ids))
  stats = env.results()[0].stats
  assert (stats.creates, stats.reads, stats.updates, stats.deletes,
          stats.scratchpad_rewrites) == (2, 1, 0, 1, 1)
  assert stats.store_sizes == (2, 2, 1) and stats.steps == 3
  assert stats.prompt_tokens == tuple(prompt_lengths)
  assert stats.context_tokens == len(tokenizer.encode(
      "\n\n".join(f"Document {i + 1}:\n{d.title}\n{d.text}"
                  for i, d in enumerate(_context().documents))))
  assert stats.truncated_tokens == 0 and stats.chunks == observation.num_chunks


def test_truncated_context_is_counted():
  env = _env(chunk_tokens=20, chunk_overlap=2, max_chunks=2)
  [observation] = env.reset([_context(num_docs=8)])
  assert observation.num_chunks == 2
  stats = env.results()[0].stats
  assert stats.truncated_tokens == stats.context_tokens - 40 > 0


def test_retrieved_memories_are_cut_to_the_token_budget():
  env = _env(max_retrieved_tokens=20)
  env.reset([_context()])
  env.step(["".join(f"<add_memory>river fact number {i} is long enough</add_memory>"
                    for i in range(4))])
  [observation] = env.step(["<update_query>river fact</update_query>"])
  shown = _shown_memories(observation)
  assert 1 <= len(observation.retrieved) < 4
  block = observation.messages[1]["content"].split("Memories found by the query:\n")[1]
  block = block.split("\nQueries used here")[0]
  assert len(_tokenizer().encode(block)) <= 20
  assert len(shown) <= len(observation.retrieved)
  env.step([f"<delete_memory>Memory {len(observation.retrieved) + 1}</delete_memory>"])
  assert env.results()[0].stats.invalid == {"memory_index_out_of_range": 1}


class _CountingEmbedder:
  """HashingEmbedder that records every call."""

  def __init__(self):
    self._inner = HashingEmbedder(256)
    self.dim = self._inner.dim
    self.calls: list[tuple[str, int]] = []

  def embed_documents(self, texts):
    self.calls.append(("documents", len(texts)))
    return self._inner.embed_documents(texts)

  def embed_queries(self, texts):
    self.calls.append(("queries", len(texts)))
    return self._inner.embed_queries(texts)


def test_one_embedding_call_of_each_kind_per_step():
  embedder = _CountingEmbedder()
  env = _env(embedder=embedder)
  observations = env.reset([_context(context_id=f"c{i}") for i in range(3)])
  # The placeholder query is embedded once, at the first reset.
  assert len(observations) == 3 and embedder.calls == [("queries", 1)]
  embedder.calls.clear()
  env.step(["<add_memory>a</add_memory><add_memory>b</add_memory>",
            "<update_query>x</update_query>",
            "<add_memory>c</add_memory><update_query>y</update_query>"])
  assert embedder.calls == [("documents", 3), ("queries", 2)]
  embedder.calls.clear()
  env.step(["<update_memory>only notes</update_memory>"] * 3)
  assert embedder.calls == []


def test_step_needs_one_response_per_active_episode():
  env = _env()
  env.reset([_context(context_id="a"), _context(context_id="b")])
  with pytest.raises(ValueError, match="2 active episodes"):
    env.step(["only one"])


def test_batch_of_episodes_finishes_independently():
  env = _env(chunk_tokens=4000)
  observations = env.reset([_context(context_id="a"),
                            _context(context_id="b", questions=(("q1?", "x"), ("q2?", "y")))])
  assert [o.episode for o in observations] == [0, 1]
  observations = env.step(["", ""])
  observations = env.step(["<final_answer>\\boxed{Paris}</final_answer>",
                           "<final_answer>\\boxed{x}</final_answer>"])
  assert [o.episode for o in observations] == [1] and env.done == [True, False]
  assert env.step(["<final_answer>\\boxed{z}</final_answer>"]) == []
  results = env.results()
  assert [r.reward for r in results] == [1.0, 0.5]


def test_scann_and_exact_backends_give_the_same_episode():
  contexts = synthetic.generate_synthetic(3, seed=5, num_updates=3, questions_per_context=2)
  runs = []
  for backend in ("scann", "exact"):
    env = _env(store_backend=backend, chunk_tokens=64, chunk_overlap=8)
    runs.append(oracle.run_episodes(env, oracle.OraclePolicy(), contexts))
  for scann_result, exact_result in zip(*runs):
    assert [t.response for t in scann_result.trajectory] == [
        t.response for t in exact_result.trajectory]
    assert [t.prompt_text for t in scann_result.trajectory] == [
        t.prompt_text for t in exact_result.trajectory]
    assert scann_result.answers == exact_result.answers
    assert scann_result.memories == exact_result.memories
  assert sum(r.stats.updates for r in runs[0]) > 0


def test_user_template_file(tmp_path):
  path = tmp_path / "template.txt"
  path.write_text("[read]\nQ: {questions}\nPAD: {scratchpad}\nMEM: {memories}\n"
                  "CHUNK {chunk_number}/{num_chunks}: {chunk}\n{{literal}}\n"
                  "[answer]\nNow answer {question} ({queries_used}/{max_queries})\n")
  env = _env(prompt_template=str(path))
  [observation] = env.reset([_context()])
  assert observation.messages[1]["content"] == (
      f"Q: 1. What is the capital of Zorland?\nPAD: (empty)\nMEM: (no memories)\n"
      f"CHUNK 1/{observation.num_chunks}: {observation.chunk_text}\n{{literal}}")
  assert observation.messages[0]["content"] == prompts.PromptTemplate().system.format(
      actions=prompts.action_instructions(env.config.enabled_actions),
      examples=prompts.action_examples(env.config.enabled_actions))
  for _ in range(observation.num_chunks):
    [observation] = env.step([""])
  assert observation.messages[1]["content"] == (
      "Now answer What is the capital of Zorland? (0/3)")


def test_bad_template_file_names_file_line_and_slot(tmp_path):
  path = tmp_path / "bad.txt"
  path.write_text("[system]\nhello {actions}\n\n[read]\nline one\n{chunk} {nonsense}\n")
  with pytest.raises(ValueError, match=r"bad\.txt:5 \(part \[read\]\): unknown slot "
                                       r"\{nonsense\}"):
    _env(prompt_template=str(path))
  path.write_text("stray text\n[read]\n{chunk}\n")
  with pytest.raises(ValueError, match=r"bad\.txt:1: text before the first part marker"):
    _env(prompt_template=str(path))


def test_response_logprobs_are_kept_in_the_trajectory():
  env = _env(chunk_tokens=4000)
  env.reset([_context()])
  env.step(["<add_memory>a</add_memory>"], response_logprobs=[[-0.5, -1.25]])
  env.step(["<final_answer>\\boxed{Paris}</final_answer>"])
  trajectory = env.results()[0].trajectory
  assert trajectory[0].response_logprobs == (-0.5, -1.25)
  assert trajectory[1].response_logprobs is None
  assert np.isclose(env.results()[0].reward, 1.0)


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.text(st.sampled_from("ab \u00e9\u4e2d.,7"), min_size=1, max_size=30)
                      .map(str.strip).filter(bool), max_size=6),
       max_tokens=st.integers(0, 40))
def test_format_memories_respects_the_budget(texts, max_tokens):
  tokenizer = _tokenizer()
  full = "\n".join(f"Memory {i}: {t}" for i, t in enumerate(texts, start=1))
  block, shown = prompts.format_memories(texts, tokenizer, max_tokens)
  assert full.startswith(block)
  if len(tokenizer.encode(full)) <= max_tokens:
    assert (block, shown) == (full, len(texts))
  else:
    assert len(tokenizer.encode(block)) <= max_tokens
    # Exactly the entries whose "Memory i: " header is whole are shown (and referable).
    headers = [f"Memory {i}: " for i in range(1, len(texts) + 1)]
    starts = [len("\n".join(f"Memory {i}: {t}" for i, t in enumerate(texts[:k], start=1)))
              + (1 if k else 0) for k in range(len(texts))]
    expected = sum(1 for h, s in zip(headers, starts) if block[s:s + len(h)] == h)
    assert shown == expected


def test_store_size_penalty_and_f1():
  env = _env(chunk_tokens=4000, store_size_penalty=0.1, store_free_size=1)
  env.reset([_context(questions=(("Capital?", "Paris"), ("Lake?", "Lake Blue Green")))])
  env.step(["<add_memory>a</add_memory><add_memory>b</add_memory><add_memory>c</add_memory>"])
  env.step(["<final_answer>\\boxed{Paris}</final_answer>"])
  env.step(["<final_answer>\\boxed{Blue lake}</final_answer>"])
  result = env.results()[0]
  assert result.exact_match == (1.0, 0.0)
  assert np.isclose(result.reward, 0.5 - 0.1 * 2)
  # Token F1 by hand: {blue, lake} against {lake, blue, green}: P = 1, R = 2/3.
  assert np.allclose(result.f1, (1.0, 0.8))


# --- Fuzz harness: random and adversarial responses through the parser and the env. -------
_FUZZ_FRAGMENTS = (
    [f"<{tag}>" for tag in ("update_memory", "update_query", "add_memory", "modify_memory",
                            "delete_memory", "final_answer")]
    + [f"</{tag}>" for tag in ("update_memory", "update_query", "add_memory",
                               "modify_memory", "delete_memory", "final_answer")]
    + ['<add_memory id="1">', "<UPDATE_QUERY k=v>", "</add_memory x>", "<think>", "</think>",
       "<foo>", "</b>", "<a ", "<", ">", "Memory 1:", "Memory 2", "memory 3: ", "Memory 0",
       "Memory 99999999999999999999", "\\boxed{", "\\boxed{ans}", "{", "}", "\\", "\\}", " ",
       "\n", "text", "Zarko lives in Belo.", "\u00e9\u4e2d", ":"])


def _random_response(rng: np.random.Generator) -> str:
  pieces = rng.choice(len(_FUZZ_FRAGMENTS), size=rng.integers(0, 40))
  return "".join(_FUZZ_FRAGMENTS[i] for i in pieces)


def _adversarial_responses(size: int) -> list[str]:
  """Inputs that were quadratic (or worse) in a parser that rescans: `size` characters."""
  def rep(piece: str, n: int = size) -> str:
    return piece * max(1, n // len(piece))
  return [
      "<final_answer>" + "\\boxed{" * 4677 + "</final_answer>",  # 8.7 s before the fix
      "<final_answer>" + rep("\\boxed{") + "</final_answer>",
      rep("\\boxed{") + "\\boxed{x}",
      rep("<add_memory>", size // 2) + rep("</update_query>", size // 2),
      rep("<add_memory>", size // 2) + rep("<update_query>q</update_query>", size // 2),
      rep("<add_memory><update_query></add_memory>"),
      rep("<a "), rep("<"), rep("<think>"), rep("</think>"), rep("<foo>"),
      "<final_answer>" + rep("{") + "</final_answer>",
      "<final_answer>" + rep("\\") + "</final_answer>",
      "<modify_memory>Memory " + "1" * size + ": x</modify_memory>",
      "<delete_memory>" + rep("Memory ") + "</delete_memory>",
      "<update_query>" + "x" * size + "</update_query>",
      "<add_memory>" + rep("a<b ") + "</add_memory>",
  ]


def _over_budget(seconds: float, characters: int, base: float = 0.1) -> bool:
  """A budget linear in the response: `base` + 5 us a character (0.1 s + 5 s for 1 MB,
  where the rescanning parser took over 60 s; 0.26 s for the 32 KB boxed case, 8.7 s)."""
  return seconds > base + 5e-6 * characters


def _fastest_time(seconds: float, retime, characters: int, base: float = 0.1) -> float:
  """`seconds`, or, when that is over budget, the fastest of it and two more `retime()`s: a case
  over budget every time is slow, not a stall of the host (loaded CI runs caught one 32 KB
  parse at 0.79 s that takes 7 ms, and one 200 KB env step over 0.66 s)."""
  if _over_budget(seconds, characters, base):
    seconds = min([seconds] + [retime() for _ in range(2)])
  return seconds


def test_parser_fuzz_is_total_valid_and_linear():
  """10^4 responses (random fragment soups and adversarial inputs up to 1 MB) through
  parse_response: none raises, every kept action is valid, none is over its time budget."""
  rng = np.random.default_rng(0)
  responses = [_random_response(rng) for _ in range(10_000 - 34)]
  responses += _adversarial_responses(32_768) + _adversarial_responses(1_000_000)
  slow = []
  for response in responses:
    num_retrieved = int(rng.integers(0, 7))
    start = time.perf_counter()
    parsed = parse_response(response, num_retrieved=num_retrieved)
    seconds = time.perf_counter() - start

    def retime() -> float:
      start = time.perf_counter()
      parse_response(response, num_retrieved=num_retrieved)  # pylint: disable=cell-var-from-loop
      return time.perf_counter() - start

    seconds = _fastest_time(seconds, retime, len(response))
    if _over_budget(seconds, len(response)):
      slow.append((response[:40], len(response), round(seconds, 2)))
    for action in parsed.actions:
      if action.memory_index is not None:
        assert 1 <= action.memory_index <= num_retrieved
      assert action.text == action.text.strip()
  assert slow == []


def test_env_fuzz_keeps_the_store_valid_and_steps_in_linear_time():
  """10^4 random responses through MemoryEnv.step (32 episodes a batch, the compact
  template, a 2-entry store cap), then the adversarial inputs one episode at a time, in the
  read and in the answer phase: no step raises; after every step each episode's store holds
  creates - deletes entries with distinct ids and non-empty texts within the cap, its prompt
  fits the budget, it is within its turn limit. No step is over its time budget: for an
  adversarial response, linear in the 32 KB the env keeps (it parses nothing else: the
  answer phase once scanned the whole response); for a batch, 0.1 s a response."""
  configs = pathlib.Path(__file__).resolve().parents[1] / "configs"
  config = dict(chunk_tokens=24, chunk_overlap=4, max_chunks=4, max_store_entries=2,
                max_queries_per_question=1, max_prompt_tokens=256,
                prompt_template=str(configs / "tiny_prompt.txt"))
  contexts = [_context(num_docs=4, questions=(("Capital of Zorland?", "Paris"),
                                              ("Largest lake?", "Blue")), context_id=f"c{i}")
              for i in range(32)]
  rng = np.random.default_rng(1)
  env = _env(**config)
  observations, stepped, slow = env.reset(contexts), 0, []
  adversarial = iter(_adversarial_responses(40_000) + _adversarial_responses(200_000))
  single = _env(**config)
  while stepped < 10_000:
    responses = [_random_response(rng) for _ in observations]
    start = time.perf_counter()
    observations = env.step(responses)
    if _over_budget(time.perf_counter() - start, 0, base=0.1 * len(responses)):
      slow.append(("batch", stepped))
    stepped += len(responses)
    _check_env_invariants(env)
    if not observations:
      observations = env.reset(contexts)
  kept = single.config.max_response_chars

  def timed_step(response: str, phase: str) -> float:
    [observation] = single.reset(contexts[:1])
    while observation.phase != phase:
      [observation] = single.step([""])
    start = time.perf_counter()
    single.step([response])
    seconds = time.perf_counter() - start
    _check_env_invariants(single)
    return seconds

  for response in adversarial:
    for phase in ("read", "answer"):
      characters = min(len(response), kept)
      seconds = _fastest_time(timed_step(response, phase),
                              lambda: timed_step(response, phase),  # pylint: disable=cell-var-from-loop
                              characters, base=0.5)
      if _over_budget(seconds, characters, base=0.5):
        slow.append((response[:40], len(response), phase, round(seconds, 2)))
  assert slow == []


def _check_env_invariants(env: env_lib.MemoryEnv) -> None:
  config = env.config
  for result, done in zip(env.results(), env.done):
    stats, memories = result.stats, result.memories
    assert len(memories) == stats.creates - stats.deletes == stats.store_sizes[-1]
    assert len(memories) <= config.max_store_entries
    assert len({m.id for m in memories}) == len(memories) and all(m.text for m in memories)
    assert stats.steps == len(result.trajectory) <= config.step_limit
    assert max(stats.prompt_tokens) <= config.max_prompt_tokens
    assert len(result.answers) == 2 and 0.0 <= result.reward <= 1.0
    assert done or stats.steps < config.step_limit
