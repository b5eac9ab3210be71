"""Teacher policies: the oracle's EM is high but honest; the MemAgent baseline overflows."""

from __future__ import annotations

import functools

import pytest

from atommem_jax.agent import env as env_lib
from atommem_jax.agent import oracle
from atommem_jax.agent.actions import parse_response
from atommem_jax.data import multihop
from atommem_jax.data import synthetic
from atommem_jax.data.tokenizer import load_tokenizer
from atommem_jax.memory.embed import HashingEmbedder
from atommem_jax.memory.embed import minilm_embedder
from _paths import SLICES as _SLICES
# Measured with the settings below (18 questions in 6 contexts of 3 per slice, 20 documents,
# 512-token chunks, HashingEmbedder(1024), the 100-row slices of tests/data): oracle EM
# hotpotqa 0.94, 2wiki 0.78, musique 1.00. Misses are real retrieval misses: top-6 of ~10
# stored documents.
_MIN_ORACLE_EM = {"hotpotqa": 0.85, "2wiki": 0.7, "musique": 0.85}


@functools.lru_cache(maxsize=None)
def _tokenizer():
  return load_tokenizer()


@functools.lru_cache(maxsize=None)
def _real_contexts(dataset: str) -> tuple[multihop.LongContext, ...]:
  samples = multihop.read_dataset(dataset, str(_SLICES[dataset]))
  return tuple(multihop.build_long_contexts(samples[:18], num_docs=20, seed=0,
                                            questions_per_context=3, pool=samples))


def _env(embedder=None, **overrides) -> env_lib.MemoryEnv:
  config = dict(chunk_tokens=512, chunk_overlap=100)
  config.update(overrides)
  return env_lib.MemoryEnv(env_lib.EnvConfig(**config), _tokenizer(),
                           embedder or HashingEmbedder(1024))


def _exact_match(results) -> float:
  scores = [em for result in results for em in result.exact_match]
  return sum(scores) / len(scores)


def _answer_prompts(result) -> list[str]:
  """The prompt each recorded answer responded to (one per question, in order)."""
  return [turn.prompt_text for turn in result.trajectory
          if any(a.kind.name == "ANSWER" for a in turn.actions)]


@pytest.mark.parametrize("dataset", sorted(_SLICES))
def test_oracle_on_real_slices_is_high_and_honest(dataset):
  contexts = _real_contexts(dataset)
  results = oracle.run_episodes(_env(), oracle.OraclePolicy(), contexts)
  exact_match = _exact_match(results)
  print(f"oracle EM on {dataset}: {exact_match:.3f}")
  assert exact_match >= _MIN_ORACLE_EM[dataset]
  for context, result in zip(contexts, results):
    assert result.stats.num_invalid == 0
    for turn in result.trajectory:
      assert parse_response(turn.response, num_retrieved=6).problems == ()
    # Honesty, checked on the prompt text: a gold answer is given only when every sentence
    # of the question's gold documents was in the prompt it answered.
    for q, (answer, prompt) in enumerate(zip(result.answers, _answer_prompts(result))):
      if answer != oracle.UNKNOWN_ANSWER:
        for d in context.gold_indices[q]:
          for sentence in oracle._sentences(context.documents[d].text):
            assert sentence in prompt


@pytest.mark.slow
def test_oracle_on_real_slices_with_minilm():
  # Measured: EM 1.00 on all three slices (about 25 s on 2 CPU cores).
  embedder = minilm_embedder()
  for dataset in sorted(_SLICES):
    results = oracle.run_episodes(_env(embedder), oracle.OraclePolicy(),
                                  _real_contexts(dataset))
    print(f"oracle EM on {dataset} with MiniLM: {_exact_match(results):.3f}")
    assert _exact_match(results) >= 0.9


def test_oracle_cannot_answer_what_retrieval_does_not_show():
  # With one memory shown per query, no question whose facts span two documents (every
  # HotpotQA question here) can have all its facts visible.
  contexts = _real_contexts("hotpotqa")
  assert all(len(gold) >= 2 for context in contexts for gold in context.gold_indices)
  results = oracle.run_episodes(_env(top_k=1), oracle.OraclePolicy(), contexts)
  assert _exact_match(results) == 0.0


def test_answer_styles_change_only_how_the_teachers_write_answers():
  """boxed_space writes "\\boxed{ X}". Actions, prompts, answers and rewards stay those of
  the plain oracle."""
  contexts = synthetic.generate_synthetic(6, seed=4, num_entities=6, num_docs=10, hops=2,
                                          num_updates=2, questions_per_context=2)
  plain = oracle.run_episodes(_env(), oracle.OraclePolicy(), contexts)
  styled = oracle.run_episodes(_env(), oracle.OraclePolicy(boxed_space=True), contexts)
  for context, a, b in zip(contexts, plain, styled):
    assert (a.answers, a.exact_match, a.reward) == (b.answers, b.exact_match, b.reward)
    assert b.stats.num_invalid == 0
    answered = 0
    for turn_a, turn_b in zip(a.trajectory, b.trajectory, strict=True):
      assert (turn_b.prompt_text, turn_b.actions) == (turn_a.prompt_text, turn_a.actions)
      answered += "\\boxed{" in turn_a.response
      assert turn_b.response == turn_a.response.replace("\\boxed{", "\\boxed{ ")
    assert answered == len(context.questions)
  memagent = oracle.run_episodes(_env(enable_store=False),
                                 oracle.MemAgentPolicy(_tokenizer(), scratchpad_tokens=400),
                                 contexts)
  memagent_spaced = oracle.run_episodes(
      _env(enable_store=False), oracle.MemAgentPolicy(_tokenizer(), scratchpad_tokens=400,
                                               boxed_space=True), contexts)
  for a, b in zip(memagent, memagent_spaced):
    assert a.answers == b.answers
    assert [t.response.replace("\\boxed{", "\\boxed{ ") for t in a.trajectory] == [
        t.response for t in b.trajectory]


def test_oracle_and_memagent_on_synthetic_updates():
  contexts = synthetic.generate_synthetic(12, seed=3, num_entities=10, num_docs=24, hops=3,
                                          num_updates=6, questions_per_context=3)
  settings = dict(chunk_tokens=128, chunk_overlap=16)
  oracle_results = oracle.run_episodes(_env(**settings), oracle.OraclePolicy(), contexts)
  delete_results = oracle.run_episodes(_env(**settings),
                                       oracle.OraclePolicy(supersede="delete"), contexts)
  memagent_results = oracle.run_episodes(
      _env(enable_store=False, **settings),
      oracle.MemAgentPolicy(_tokenizer(), scratchpad_tokens=64), contexts)
  ample_results = oracle.run_episodes(
      _env(enable_store=False, **settings),
      oracle.MemAgentPolicy(_tokenizer(), scratchpad_tokens=400), contexts)
  em = {name: _exact_match(r) for name, r in [("oracle", oracle_results),
                                                ("oracle_delete", delete_results),
                                                ("memagent_64", memagent_results),
                                                ("memagent_400", ample_results)]}
  print("synthetic EM:", em)
  assert em["oracle"] >= 0.9 and em["oracle_delete"] >= 0.9
  assert em["memagent_64"] <= em["oracle"] - 0.3
  assert em["memagent_400"] >= 0.9  # the baseline fails only through its budget
  assert sum(r.stats.updates for r in oracle_results) > 0
  assert sum(r.stats.deletes for r in delete_results) > 0
  assert all(r.stats.num_invalid == 0
             for r in oracle_results + delete_results + memagent_results)
  # Honesty on the synthetic task: a gold answer only when every LATEST chain fact was in
  # the prompt answered. Updates really replace: the final store holds the latest version
  # of each chain fact and no superseded version.
  for context, result in zip(contexts, oracle_results):
    for q, (answer, prompt) in enumerate(zip(result.answers, _answer_prompts(result))):
      if answer != oracle.UNKNOWN_ANSWER:
        assert all(fact.text in prompt for fact in context.evidence[q].chain)
    stored = " ".join(entry.text for entry in result.memories)
    for evidence in context.evidence:
      assert all(fact.text in stored for fact in evidence.chain)
      assert not any(s.old.text in stored for s in evidence.superseded)


def test_question_labels_start_each_entry_with_the_first_question_it_answers():
  """entry_label="question" changes how entries start (and splits a document's facts that
  answer different questions into separate entries; retrieval then differs, so answers may
  too): the oracle stays near perfect and keeps the latest facts only; each entry begins
  with the first question whose chain holds one of its facts, an Update keeps the label,
  and the rest of the entry is those facts."""
  contexts = synthetic.generate_synthetic(12, seed=3, num_entities=10, num_docs=24, hops=3,
                                          num_updates=6, questions_per_context=3)
  settings = dict(chunk_tokens=128, chunk_overlap=16)
  titled = oracle.run_episodes(_env(**settings), oracle.OraclePolicy(), contexts)
  labelled = oracle.run_episodes(_env(**settings), oracle.OraclePolicy(entry_label="question"),
                                 contexts)
  assert _exact_match(labelled) >= _exact_match(titled) - 0.05 and _exact_match(labelled) >= 0.9
  updated = 0
  for context, result in zip(contexts, labelled):
    facts = {fact.text for evidence in context.evidence for fact in evidence.chain}
    stored = " ".join(entry.text for entry in result.memories)
    assert all(fact in stored for fact in facts)
    assert not any(s.old.text in stored for e in context.evidence for s in e.superseded)
    updated += result.stats.updates
    for entry in result.memories:
      asked = [q for q, evidence in enumerate(context.evidence)
               if any(fact.text in entry.text for fact in evidence.chain)]
      label = context.questions[asked[0]].question
      assert entry.text.startswith(label + " "), (label, entry.text)
      rest = oracle._sentences(entry.text[len(label) + 1:])
      assert rest and all(sentence in facts for sentence in rest), entry.text
  assert updated > 0
  with pytest.raises(ValueError, match="entry_label"):
    oracle.OraclePolicy(entry_label="sentence")


def test_gold_facts_of_synthetic_contexts_follow_the_evidence():
  [context] = synthetic.generate_synthetic(1, seed=11, hops=2, num_updates=4,
                                           questions_per_context=2)
  gold = oracle.gold_facts(context)
  for q, evidence in enumerate(context.evidence):
    assert [gold.units[u].text for u in gold.required[q]] == [f.text for f in evidence.chain]
    for supersession in evidence.superseded:
      [old] = [u for u in gold.units if u.text == supersession.old.text]
      [new] = [u for u in gold.units if u.text == supersession.new.text]
      assert old.replaced_by == new.index and new.replaces == old.index
      assert context.documents[new.doc_index].text.find(new.text) >= 0


def test_oracle_follows_ablations():
  contexts = synthetic.generate_synthetic(4, seed=7, num_updates=4, questions_per_context=2)
  for switch in ("update", "read", "scratchpad"):
    env = _env(chunk_tokens=96, chunk_overlap=12, **{f"enable_{switch}": False})
    policy = oracle.OraclePolicy(enabled=env.config.enabled_actions)
    results = oracle.run_episodes(env, policy, contexts)
    assert all(r.stats.num_invalid == 0 for r in results)
    assert sum(r.stats.creates for r in results) > 0
    updates = sum(r.stats.updates for r in results)
    assert updates > 0 if switch == "scratchpad" else updates == 0


def test_oracle_examples_are_the_oracle_steps_in_its_answer_style():
  """sft_data.oracle_examples: one example per oracle step, its prompt and its response
  then EOS; oracle_options reach the teacher (the same steps, answers in its style)."""
  from atommem_jax.train import sft_data  # pylint: disable=g-import-not-at-top
  contexts = synthetic.generate_synthetic(6, seed=3, num_entities=4, num_cities=3, num_docs=6,
                                          hops=1, num_updates=1, doc_length=4)
  config = env_lib.EnvConfig(chunk_tokens=96, chunk_overlap=8)
  tokenizer, embedder = _tokenizer(), HashingEmbedder(256)
  plain, reward = sft_data.oracle_examples(contexts, config, tokenizer, embedder)
  assert reward == 1.0
  turns = [turn for result in oracle.run_episodes(
      env_lib.MemoryEnv(config, tokenizer, embedder), oracle.OraclePolicy(), contexts)
           for turn in result.trajectory]
  assert [(list(e.prompt_ids), list(e.response_ids)) for e in plain] == [
      (list(t.prompt_token_ids), tokenizer.encode(t.response) + [tokenizer.eos_token_id])
      for t in turns]
  styled, _ = sft_data.oracle_examples(contexts, config, tokenizer, embedder,
                                       oracle_options=dict(boxed_space=True))
  texts = [(tokenizer.decode(e.prompt_ids), tokenizer.decode(e.response_ids)) for e in plain]
  styled_texts = [(tokenizer.decode(e.prompt_ids), tokenizer.decode(e.response_ids))
                  for e in styled]
  assert [p for p, _ in styled_texts] == [p for p, _ in texts]
  answers = [(r, s) for (_, r), (_, s) in zip(texts, styled_texts) if r != s]
  assert len(answers) == len(contexts)  # one known answer each
  for plain_text, styled_text in answers:
    assert styled_text == plain_text.replace("\\boxed{", "\\boxed{ ")


def test_copy_examples_repeat_a_span_of_the_rendered_context():
  """sft_data.copy_examples: per context, a span of the tokenized rendered documents as the
  prompt and the same span plus EOS as the response; spans move with the seed; contexts
  shorter than the span give the whole context."""
  from atommem_jax.train import sft_data  # pylint: disable=g-import-not-at-top
  contexts = synthetic.generate_synthetic(8, seed=5, num_entities=4, num_cities=3, num_docs=6,
                                          hops=1, num_updates=1, doc_length=4)
  tokenizer = _tokenizer()
  examples = sft_data.copy_examples(contexts, tokenizer, 40, seeds=[0])
  assert len(examples) == len(contexts)
  starts = []
  for context, example in zip(contexts, examples):
    ids = tokenizer.encode(multihop.render_context(context.documents), add_special_tokens=False)
    span = list(example.prompt_ids)
    assert len(span) == 40 and list(example.response_ids) == span + [tokenizer.eos_token_id]
    start = next(i for i in range(len(ids) - 39) if ids[i:i + 40] == span)
    starts.append(start)
    assert tokenizer.decode(span) in multihop.render_context(context.documents)
  assert len(set(starts)) > 1  # random starts, not always the head
  moved = sft_data.copy_examples(contexts, tokenizer, 40, seeds=[1])
  assert [e.prompt_ids for e in moved] != [e.prompt_ids for e in examples]
  # Several seeds: seed by seed, each the same as on its own.
  assert sft_data.copy_examples(contexts, tokenizer, 40, seeds=[0, 1]) == examples + moved
  assert sft_data.copy_examples(contexts, tokenizer, 40, seeds=[]) == []
  whole = sft_data.copy_examples(contexts[:1], tokenizer, 100_000, seeds=[0])[0]
  assert list(whole.prompt_ids) == tokenizer.encode(
      multihop.render_context(contexts[0].documents), add_special_tokens=False)
  with pytest.raises(ValueError, match="span_tokens"):
    sft_data.copy_examples(contexts, tokenizer, 0, seeds=[0])


def test_decoys_start_episodes_from_a_wrong_memory_that_the_oracle_repairs():
  """decoy_share=1: every context whose first chunk shows none of a question's facts starts
  with a decoy entry for it (the question label, then the fact's oldest version with its last
  name swapped for another name of that chunk); when the fact appears the oracle Updates the
  decoy, so the final store holds the latest facts and no decoy, and EM stays 1."""
  contexts = synthetic.generate_synthetic(48, seed=3, num_entities=4, num_cities=3,
                                          num_docs=6, hops=1, num_updates=1, doc_length=4)
  env = _env(chunk_tokens=96, chunk_overlap=8, top_k=1)
  plain = oracle.run_episodes(env, oracle.OraclePolicy(entry_label="question"), contexts)
  policy = oracle.OraclePolicy(entry_label="question", decoy_share=1.0)
  results = oracle.run_episodes(env, policy, contexts)
  assert _exact_match(results) == 1.0
  decoyed = 0
  for episode, (context, result, before) in enumerate(zip(contexts, results, plain)):
    steps = policy.decoy_steps(episode)
    [evidence] = context.evidence
    stored = " ".join(entry.text for entry in result.memories)
    assert all(fact.text in stored for fact in evidence.chain)
    first_chunk_has_fact = any(
        a.kind.name == "CREATE" for a in before.trajectory[0].actions)
    if first_chunk_has_fact:
      assert not steps
      continue
    decoyed += 1
    assert steps == {0}
    [create] = [a for a in result.trajectory[0].actions if a.kind.name == "CREATE"]
    label = context.questions[0].question
    assert create.text.startswith(label + " ")
    sentence = create.text[len(label) + 1:]
    oldest = ([s.old.text for s in evidence.superseded] or [evidence.chain[0].text])[0]
    original_words, decoy_words = oldest.rstrip(".").split(), sentence.rstrip(".").split()
    assert original_words[:-1] == decoy_words[:-1] and original_words[-1] != decoy_words[-1]
    assert decoy_words[-1] in result.trajectory[0].prompt_text.split("Document 1:")[-1]
    assert sentence not in stored
    assert result.stats.updates >= 1 and result.stats.updates == before.stats.updates + 1
  assert decoyed >= 10
  with pytest.raises(ValueError, match="decoy_share"):
    oracle.OraclePolicy(decoy_share=1.5)


def test_decoy_share_picks_contexts_by_id_and_oracle_examples_leave_decoys_out():
  """About `decoy_share` of the contexts get decoys, the same ones in every run; the SFT
  examples are the oracle's steps minus those that wrote a decoy, and the steps after one
  see it as Memory 1."""
  from atommem_jax.train import sft_data  # pylint: disable=g-import-not-at-top
  contexts = synthetic.generate_synthetic(64, seed=5, num_entities=4, num_cities=3,
                                          num_docs=6, hops=1, num_updates=1, doc_length=4)
  config = env_lib.EnvConfig(chunk_tokens=96, chunk_overlap=8, top_k=1)
  tokenizer, embedder = _tokenizer(), HashingEmbedder(256)
  env = env_lib.MemoryEnv(config, tokenizer, embedder)
  counts = []
  for share in (0.0, 0.5, 1.0):
    policy = oracle.OraclePolicy(decoy_share=share)
    oracle.run_episodes(env, policy, contexts)
    counts.append({i for i in range(len(contexts)) if policy.decoy_steps(i)})
  assert not counts[0] and counts[1] < counts[2] and 0.25 < len(counts[1]) / len(counts[2]) < 0.75
  policy = oracle.OraclePolicy(decoy_share=1.0)
  results = oracle.run_episodes(env, policy, contexts)
  examples, reward = sft_data.oracle_examples(contexts, config, tokenizer, embedder,
                                              decoy_share=1.0)
  assert reward == 1.0
  kept = [(turn, episode) for episode, result in enumerate(results)
          for turn in result.trajectory if turn.step not in policy.decoy_steps(episode)]
  assert [list(e.prompt_ids) for e in examples] == [list(t.prompt_token_ids) for t, _ in kept]
  responses = {}
  for example, (_, episode) in zip(examples, kept):
    responses.setdefault(episode, []).append(tokenizer.decode(example.response_ids))
  for episode in counts[2]:
    decoy = results[episode].trajectory[0].actions[-1].text
    after = results[episode].trajectory[1]
    assert f"Memory 1: {decoy}" in after.prompt_text
    assert all(decoy not in response for response in responses[episode])
