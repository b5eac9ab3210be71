r"""Conformance with the official AtomMem loop: one test per behaviour of issue 17's table.

Each test drives the real `MemoryEnv` with scripted responses and asserts what the official
implementation does at that point. References (RUCBM/AtomMem, paths under AtomMem/):
  LOOP    recurrent/impls/memory_long_short_multiquery.py (MemoryAgent)
  REWARD  verl/utils/reward_score/__init__.py (parse_final_answer, the multiquery branch of
          default_compute_score) and verl/utils/reward_score/hotpotqa.py (compute_score)
  RUN     script/train/run_memory_longcontext.sh
Line numbers are those of LOOP at commit 3c4dc35f. The table's last row (GRPO's old
log-probs) belongs to the trainer, not the environment: tests/test_train_steps.py.
Official defects that are not copied have their own test at the end (docs/protocol.md).
"""

from __future__ import annotations

import functools
import json
import re

import pytest

from atommem_jax import config_lib
from atommem_jax.agent import env as env_lib
from atommem_jax.agent import oracle
from atommem_jax.data import synthetic
from atommem_jax.memory.embed import HashingEmbedder
import _contexts


_tokenizer = _contexts.tokenizer
_context = functools.partial(_contexts.context, num_docs=8)


def _env(**overrides) -> env_lib.MemoryEnv:
  config = dict(chunk_tokens=24, chunk_overlap=4, store_backend="exact")
  config.update(overrides)
  return env_lib.MemoryEnv(env_lib.EnvConfig(**config), _tokenizer(), HashingEmbedder(256))


def _shown(observation) -> dict[str, int]:
  """Memory text -> i as printed in the user prompt (read from the text, not the fields)."""
  user = observation.messages[1]["content"]
  return {text: int(i) for i, text in re.findall(r"^Memory (\d+): (.*)$", user, re.MULTILINE)}


def _store(env) -> list[str]:
  return [entry.text for entry in env.results()[0].memories]


QUESTIONS = (("What is the capital of Zorland?", "Paris"), ("Which lake is largest?", "Blue"),
             ("Which tower is oldest?", "North"))


def test_retrieval_runs_the_latest_query_from_the_first_step():
  """LOOP 298 (start: self.query = "defult query, change it!") and 333-336 / 353-356
  (action: every step retriever.invoke(self.query[idx]) over the trajectory's own memories,
  shown as "Memory i"): memories show from the first step, with a placeholder query until
  the first Read; 537-538 (_handle_query: a Read sets the query of the next action());
  a store edit shows at the next prompt."""
  env = _env()
  [observation] = env.reset([_context()])
  assert observation.query == env.config.initial_query and _shown(observation) == {}
  [observation] = env.step(["<add_memory>alpha river fact</add_memory>"])
  assert _shown(observation) == {"alpha river fact": 1}  # no Read was issued
  [observation] = env.step(["<add_memory>beta lake fact</add_memory>"])
  assert set(_shown(observation)) == {"alpha river fact", "beta lake fact"}
  assert observation.query == env.config.initial_query
  [observation] = env.step(["<update_query>beta lake</update_query>"])
  assert observation.query == "beta lake"
  assert [memory.text for memory in observation.retrieved][0] == "beta lake fact"
  [observation] = env.step(["<delete_memory>Memory 1</delete_memory>"])
  assert _shown(observation) == {"alpha river fact": 1} and observation.query == "beta lake"


def test_next_chunk_comes_only_after_a_create_or_an_update():
  """LOOP 467-473 (add_memory / modify_memory set move_on), 489-490 (move_on:
  context_step += 1): a response with only <update_memory>, <update_query> or
  <delete_memory> stays on its chunk. LOOP 461-463: no valid tag moves on (the intent: in
  the published runs the missing 'action_rate/not_follow' key raises and it stays)."""
  env = _env(max_chunks=10)
  [observation] = env.reset([_context(num_docs=12)])
  script = [("<update_memory>notes</update_memory>", 0),
            ("<update_query>river</update_query>", 0),
            ("<add_memory>one</add_memory>", 1),
            ("<delete_memory>Memory 1</delete_memory>", 1),
            ("<update_memory>a</update_memory><update_query>b</update_query>", 1),
            ("<add_memory>two</add_memory>", 2),
            ("<modify_memory>Memory 1: two, rewritten</modify_memory>", 3),
            ("no tags at all", 4),
            ("<bogus>x</bogus><delete_memory>Memory 9</delete_memory>", 5)]
  assert observation.num_chunks > 6
  for response, chunk in script:
    [observation] = env.step([response])
    assert (response, observation.chunk_index) == (response, chunk)
  assert _store(env) == ["two, rewritten"]


def test_query_budget_resets_on_edits_and_skips_a_question_beyond_the_limit():
  """LOOP 529-540 (_handle_query: with query_times > 2 the question is skipped,
  answer_idx += 1 and query_times = 0, or at the last question is_final; otherwise the
  query is set and query_times += 1), counted per Read tag, also while reading; 496, 501,
  515, 527 (add, scratchpad, modify and delete reset query_times); 484 (an answer resets)."""
  env = _env(max_chunks=10)
  [observation] = env.reset([_context(num_docs=12, questions=QUESTIONS[:2])])
  for used in (1, 2, 3):
    [observation] = env.step([f"<update_query>q{used}</update_query>"])
    assert (observation.queries_used, observation.chunk_index) == (used, 0)
  [observation] = env.step(["<update_memory>notes</update_memory>"])  # an edit resets
  assert observation.queries_used == 0
  # Three Reads in one response count three times; a fourth skips question 1 while reading.
  [observation] = env.step(["<update_query>a</update_query>" * 3])
  assert observation.queries_used == 3 and observation.query == "a"
  [observation] = env.step(["<update_query>over</update_query>"])
  assert observation.queries_used == 0 and observation.query == "a"
  assert observation.phase == "read" and observation.chunk_index == 0
  stats = env.results()[0].stats
  assert stats.questions_skipped == 1 and stats.invalid == {"query_limit": 1}
  # At the last question, one Read too many ends the episode, still while reading.
  assert env.step(["<update_query>x</update_query>" * 4]) == [] and env.done == [True]
  result = env.results()[0]
  assert result.answers == ("", "") and result.reward == 0.0
  assert result.stats.questions_skipped == 2 and not result.stats.hit_step_limit


def test_a_skipped_question_is_never_asked():
  """LOOP 531-533 then 330-342: after a skip while reading, the answer phase starts at
  self.prompt[idx][answer_idx], the question after the skipped one."""
  env = _env(chunk_tokens=4000, max_queries_per_question=1)
  env.reset([_context(questions=QUESTIONS[:2])])
  env.step(["<update_query>a</update_query>"])
  env.step(["<update_query>b</update_query>"])  # over the limit: question 1 is skipped
  [observation] = env.step(["<add_memory>fact</add_memory>"])
  assert observation.phase == "answer" and observation.question_index == 1
  assert QUESTIONS[1][0] in observation.prompt_text
  assert QUESTIONS[0][0] not in observation.prompt_text
  assert env.step(["<final_answer>\\boxed{Blue}</final_answer>"]) == []
  assert env.results()[0].exact_match == (0.0, 1.0)


def test_episode_length_is_max_chunks_plus_one_turns_answers_included():
  """LOOP 391-392 (update: agent_step > max_chunks sets is_final) with 323 and 330 (once
  the context is used up, the turns answer questions): at most max_chunks + 1 turns for
  reading and answering together."""
  env = _env(max_chunks=3)
  [observation] = env.reset([_context(num_docs=12, questions=QUESTIONS)])
  assert env.config.step_limit == 4 and observation.num_chunks == 3
  for _ in range(3):
    [observation] = env.step(["<add_memory>fact</add_memory>"])
  assert observation.phase == "answer"
  assert env.step(["<final_answer>\\boxed{Paris}</final_answer>"]) == []
  result = env.results()[0]
  assert result.answers == ("Paris", "", "") and result.stats.hit_step_limit
  assert len(result.trajectory) == 4


def test_answer_phase_asks_one_question_a_turn_and_repeats_it_until_answered():
  """LOOP 330-347 (the final prompt shows self.prompt[idx][self.answer_idx[idx]] only),
  465-488 (every tag is handled in every phase: store edits still run; final_answer moves
  to the next question, or ends at the last); a turn with neither an answer nor a query
  changes no index: the same question is asked again."""
  env = _env(chunk_tokens=4000)
  [observation] = env.reset([_context(num_docs=2, questions=QUESTIONS)])
  assert observation.num_chunks == 1
  [observation] = env.step(["<add_memory>Blue is the largest lake.</add_memory>"])
  assert observation.phase == "answer" and observation.question_index == 0
  user = observation.messages[1]["content"]
  assert QUESTIONS[0][0] in user and all(q not in user for q, _ in QUESTIONS[1:])
  [observation] = env.step(["<add_memory>North is the oldest tower.</add_memory>"])
  assert observation.question_index == 0 and len(_store(env)) == 2  # edits run
  [observation] = env.step(["I think \\boxed{Paris}"])  # no <final_answer>: asked again
  assert observation.question_index == 0 and observation.prompt_text.count(QUESTIONS[0][0])
  [observation] = env.step(["<final_answer>\\boxed{paris.}</final_answer>"])
  assert observation.question_index == 1 and QUESTIONS[1][0] in observation.prompt_text
  [observation] = env.step(["<update_query>largest lake</update_query>"])
  assert observation.question_index == 1 and observation.queries_used == 1
  assert "Blue is the largest lake." in _shown(observation)
  [observation] = env.step(["<final_answer>\\boxed{Blue}</final_answer>"])
  assert env.step(["<final_answer>\\boxed{North}</final_answer>"]) == []
  result = env.results()[0]
  assert result.answers == ("paris.", "Blue", "North") and result.reward == 1.0
  assert [turn.phase for turn in result.trajectory] == ["read"] + ["answer"] * 6


def test_an_answer_outside_boxed_scores_zero():
  """REWARD: parse_final_answer takes the <final_answer> content, and hotpotqa.py 18-28
  (compute_score) scores only the last \\boxed{} in it: no box, no credit. LOOP 480-488:
  the answer still moves to the next question."""
  env = _env(chunk_tokens=4000)
  env.reset([_context(num_docs=2, questions=(QUESTIONS[0], ("Capital again?", "Paris")))])
  env.step([""])
  [observation] = env.step(["<final_answer>Paris</final_answer>"])
  assert observation.question_index == 1
  env.step(["<final_answer>\\boxed{Paris}</final_answer>"])
  result = env.results()[0]
  assert result.answers == ("", "Paris") and result.exact_match == (0.0, 1.0)
  assert result.reward == 0.5 and result.stats.invalid == {"missing_boxed": 1}


def test_thinking_is_on_and_sft_targets_keep_the_think_text(tmp_path):
  """LOOP 347 and 368: apply_chat_template(message, add_generation_prompt=True) without
  enable_thinking, so Qwen3 opens its own <think> block; the parser drops the block. The
  SFT targets are the teacher's responses as written, <think> text included."""
  from atommem_jax.train import sft_data  # pylint: disable=g-import-not-at-top
  tokenizer = _tokenizer()
  env = _env()
  [observation] = env.reset([_context()])
  assert observation.prompt_text == tokenizer.apply_chat_template(
      list(observation.messages), tokenize=False, add_generation_prompt=True)
  assert observation.prompt_text != tokenizer.apply_chat_template(
      list(observation.messages), tokenize=False, add_generation_prompt=True,
      enable_thinking=False)
  assert observation.prompt_text.endswith("<|im_start|>assistant\n")
  [observation] = env.step(["<think>\nShould I store <add_memory>x</add_memory>?\n</think>\n\n"
                            "<add_memory>real fact</add_memory>"])
  assert _store(env) == ["real fact"]
  response = "<think>\nThe fact is new.\n</think>\n\n<add_memory>real fact</add_memory>"
  path = tmp_path / "trajectories.jsonl"
  path.write_text(json.dumps({"messages": [*observation.messages,
                                           {"role": "assistant", "content": response}]}))
  [example] = sft_data.file_examples(str(path), tokenizer)
  assert list(example.prompt_ids) == list(observation.prompt_token_ids)
  assert list(example.response_ids) == tokenizer.encode(response) + [tokenizer.eos_token_id]


def test_opening_tags_take_attributes_and_long_contents_are_kept():
  """LOOP 552 (_extract_paired_tags: <(\\w+)[^>]*>(.*?)</\\1>, case-insensitive): an opening
  tag may carry attributes; 494-496 (_handle_add writes the content to the store as it
  is): the content is stored whole, however long."""
  long_fact = " ".join(f"fact {i} of a long note." for i in range(1000))  # 24k characters
  env = _env()
  env.reset([_context()])
  [observation] = env.step([f'<ADD_MEMORY source="doc 3">{long_fact}</add_memory>'
                            "<update_query kind=keywords>long note</update_query>"])
  assert _store(env) == [long_fact] and observation.query == "long note"
  assert env.results()[0].stats.invalid == {}


def test_built_in_prompt_has_the_official_structure():
  """LOOP 126 (SYSTEM_PROMPT: the memory actions, one example each, a response example),
  180 + 200 (TEMPLATE_MEMORY + STRATEGY_INJECTION_1: the questions one per line and
  unnumbered, short memory, query, memories, tips, the chunk, then the strategy block with
  the query count) and 213 (TEMPLATE_FINAL_BOXED: the one question to answer)."""
  env = _env(chunk_tokens=4000)
  [observation] = env.reset([_context(num_docs=2, questions=QUESTIONS)])
  system, user = (message["content"] for message in observation.messages)
  for tag in ("update_memory", "update_query", "add_memory", "modify_memory",
              "delete_memory", "final_answer"):
    assert system.count(f"<{tag}>") >= 2  # the reference line and a worked example
  assert "Example of a response:" in system
  assert "\n".join(q for q, _ in QUESTIONS) in user and "1. " + QUESTIONS[0][0] not in user
  order = [user.index(QUESTIONS[0][0]), user.index("Scratchpad:"),
           user.index("Retrieval query:"), user.index("Memories found by the query:"),
           user.index(observation.chunk_text), user.index("How to manage your memory:")]
  assert order == sorted(order)
  assert "five or six" in user and "0 of 3 queries" in user
  [observation] = env.step(["<add_memory>fact</add_memory>"])
  user = observation.messages[1]["content"]
  assert QUESTIONS[0][0] in user and QUESTIONS[1][0] not in user
  assert "\\boxed{your answer}" in user


def test_an_official_shaped_template_file_runs_unchanged(tmp_path):
  """The official prompt as a file (SYSTEM_PROMPT, TEMPLATE_MEMORY + STRATEGY_INJECTION_1,
  TEMPLATE_FINAL_BOXED as [system], [read], [answer]) renders with its own slot names:
  {prompt}, {short_memory}, {query}, {long_memory}, {chunk}, {query_times}, and the
  format-escaped \\boxed{{}}. The words here are placeholders of that shape."""
  path = tmp_path / "official_shape.txt"
  path.write_text(
      "[system]\nYou read and keep memory.\n\naction example 1:\n"
      "<update_query>a; b.</update_query>\n\n"
      "[read]\n\nQuestion:\n{prompt}\n\nShort memory:\n{short_memory}\n\nQuery:\n{query}\n\n"
      "Memory:\n{long_memory}\n\nArticle:\n{chunk}\n\nImportant:\n"
      "You have update query **{query_times}** times.\n\n"
      "[answer]\nAnswer in \\boxed{{}}.\n\nproblem:\n{prompt}\n\nShort memory:\n"
      "{short_memory}\n\nQuery:\n{query}\n\nMemory:\n{long_memory}\n\nExample 2:\n"
      "<final_answer>\\boxed{{Jacob}}</final_answer>.\n"
      "You have update query **{query_times}** times.\n")
  env = _env(prompt_template=str(path), chunk_tokens=4000)
  [observation] = env.reset([_context(num_docs=2, questions=QUESTIONS[:2])])
  assert observation.messages[0]["content"] == (
      "You read and keep memory.\n\naction example 1:\n<update_query>a; b.</update_query>")
  assert observation.messages[1]["content"] == (
      f"Question:\n{QUESTIONS[0][0]}\n{QUESTIONS[1][0]}\n\nShort memory:\n\n\nQuery:\n"
      f"{env.config.initial_query}\n\nMemory:\n(no memories)\n\nArticle:\n"
      f"{observation.chunk_text}\n\nImportant:\nYou have update query **0** times.")
  [observation] = env.step(["<update_memory>s</update_memory><add_memory>m</add_memory>"])
  assert observation.messages[1]["content"] == (
      f"Answer in \\boxed{{}}.\n\nproblem:\n{QUESTIONS[0][0]}\n\nShort memory:\ns\n\nQuery:\n"
      f"{env.config.initial_query}\n\nMemory:\nMemory 1: m\n\nExample 2:\n"
      "<final_answer>\\boxed{Jacob}</final_answer>.\nYou have update query **0** times.")


def test_prompt_budget_holds_16k_and_cuts_the_oldest_memories_first(tmp_path):
  """RUN: MAXLEN=16384 (the prompt length vLLM is sized for) and LOOP 338 / 358
  (truncate_by_tokens of the memories): the default budget is 16384 tokens, the largest
  prompt bucket holds it, and a longer prompt is cut instead of failing, oldest memories
  first, with "Memory i" renumbered over what is shown; the cut is counted."""
  assert env_lib.EnvConfig().max_prompt_tokens == 16384
  assert config_lib.base_config().rollout.prompt_buckets[-1] >= 16384
  template = tmp_path / "short.txt"  # a read prompt shorter than the answer prompt
  template.write_text("[read]\n{chunk}\n[answer]\n{question}\n{memories}\n")
  env = _env(chunk_tokens=4000, prompt_template=str(template))
  env.reset([_context(num_docs=2)])
  [observation] = env.step(["".join(f"<add_memory>fact {i} of the store is here.</add_memory>"
                                    for i in range(4))])
  full = len(observation.prompt_token_ids)
  ids = {entry.text: entry.id for entry in env.results()[0].memories}
  budget = full - 12  # about two memory lines too long
  env = _env(chunk_tokens=4000, max_prompt_tokens=budget, prompt_template=str(template))
  env.reset([_context(num_docs=2)])
  [observation] = env.step(["".join(f"<add_memory>fact {i} of the store is here.</add_memory>"
                                    for i in range(4))])
  assert len(observation.prompt_token_ids) <= budget
  kept = sorted(memory.id for memory in observation.retrieved)
  assert kept == sorted(ids.values())[-len(kept):] and 1 <= len(kept) < 4
  assert _shown(observation) == {memory.text: i for i, memory in
                                 enumerate(observation.retrieved, start=1)}
  stats = env.results()[0].stats
  assert stats.prompt_cuts == 1 and stats.memories_cut == 4 - len(kept)
  newest = observation.retrieved[0]
  env.step(["<modify_memory>Memory 1: rewritten</modify_memory>"])
  assert {e.id: e.text for e in env.results()[0].memories}[newest.id] == "rewritten"
  # Far too small a budget: every part is cut, the prompt still fits, the episode goes on.
  env = _env(chunk_tokens=4000, max_prompt_tokens=40)
  [observation] = env.reset([_context(num_docs=2)])
  assert len(observation.prompt_token_ids) == 40
  assert env.step(["<add_memory>x</add_memory>"])[0].phase == "answer"


def test_defects_of_the_reference_are_not_copied():
  """docs/protocol.md, kept deviations: LOOP 290 (one FAISS index for the whole batch;
  modify_document, after 552, deletes the first entry with the same text in any
  trajectory); 509-513 ("Memory 0" gives doc_idx -1, the last entry); REWARD (every answer
  is scored against the golds of all questions, rewards above 1); 491 with 506-507 (a
  malformed modify raises on the missing metrics key and the rest of the response is lost)."""
  env = _env(chunk_tokens=4000)
  env.reset([_context(context_id="a", num_docs=2, questions=QUESTIONS[:2]),
             _context(context_id="b", num_docs=2, questions=QUESTIONS[:2])])
  env.step(["<add_memory>same text</add_memory>", "<add_memory>same text</add_memory>"])
  env.step(["<modify_memory>Memory 1: changed in a</modify_memory>"
            "<modify_memory>Memory 0: the last entry?</modify_memory>"
            "<modify_memory>no index</modify_memory><add_memory>after the bad ones</add_memory>",
            "<final_answer>\\boxed{Blue}</final_answer>"])  # question 1's gold is Paris
  env.step(["<final_answer>\\boxed{Blue}</final_answer>",
            "<final_answer>\\boxed{Blue}</final_answer>"])
  a, b = env.results()
  assert [m.text for m in a.memories] == ["changed in a", "after the bad ones"]
  assert [m.text for m in b.memories] == ["same text"]
  assert a.stats.invalid == {"memory_index_out_of_range": 1, "bad_memory_ref": 1}
  assert b.exact_match == (0.0, 1.0) and b.reward == 0.5


def test_oracle_follows_the_protocol_on_real_shaped_runs():
  """The scripted teacher under these rules: it reaches every question within
  max_chunks + 1 turns, with no invalid action and no skipped question."""
  contexts = synthetic.generate_synthetic(4, seed=2, num_updates=2, questions_per_context=2)
  results = oracle.run_episodes(_env(chunk_tokens=96, chunk_overlap=8), oracle.OraclePolicy(),
                                contexts)
  for result in results:
    assert result.stats.num_invalid == 0 and result.stats.questions_skipped == 0
    assert not result.stats.hit_step_limit and all(result.answers)
  assert sum(em for r in results for em in r.exact_match) / 8 >= 0.9


@pytest.mark.parametrize("phase_chunks", [1, 3])
def test_no_store_configuration_moves_on_every_response(phase_chunks):
  """An ablation the reference has no counterpart for: without Create and Update (MemAgent
  style), a read-phase response can never move on by the rule above, so every one does."""
  env = _env(enable_store=False, chunk_tokens=4000 if phase_chunks == 1 else 24, max_chunks=3)
  [observation] = env.reset([_context(num_docs=12 if phase_chunks == 3 else 2)])
  for chunk in range(1, phase_chunks):
    [observation] = env.step(["<update_memory>notes</update_memory>"])
    assert observation.chunk_index == chunk
  [observation] = env.step(["<update_memory>notes</update_memory>"])
  assert observation.phase == "answer"
