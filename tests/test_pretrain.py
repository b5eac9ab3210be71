"""Pretraining: the generated rows (train/pretrain_data.py), the probe, and the stage in the CLI.

References: rows are read back by decoding them with the tokenizer and parsing the text (the
facts stated, the values asked, the documents and answers of the contexts); the probe's
accuracy is checked on sequences built by transformers' own greedy choices, so the share of
hits is known by construction; a pretraining run killed after its step-2 checkpoint and
resumed exports the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy

from atommem_jax import config_lib
from atommem_jax.data import multihop
from atommem_jax.data import synthetic
from atommem_jax.data import tokenizer as tokenizer_lib
from atommem_jax.train import pretrain_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = dict(tasks="recall:4,copy:1,documents:1,qa:1,facts:1", batch_size=32, max_len=96,
               recall_facts=16, recall_facts_start=3, recall_curriculum_steps=1000,
               recall_queries=16, recall_plain_share=0.0)


def _contexts(count: int = 8):
  return synthetic.generate_synthetic(count, seed=0, num_entities=4, num_cities=3, num_docs=6,
                                      hops=1, num_updates=1, doc_length=4)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  """A synthetic BPE whose corpus states facts about every name (each then one token)."""
  contexts = _contexts(32)
  texts = [multihop.render_context(c.documents) for c in contexts]
  texts += [f"{q.question} {q.answers[0]}" for c in contexts for q in c.questions]
  texts += [" ".join(f"{name} is {name} . ? {name} is {name} ." for name in synthetic.NAMES)] * 3
  directory = str(tmp_path_factory.mktemp("tokenizer"))
  tokenizer_lib.train_bpe_tokenizer(texts, 2048, directory)
  return directory


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
  return tokenizer_lib.load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="module")
def corpus(tokenizer):
  return pretrain_data.make_corpus(tokenizer, _contexts(), recall=True, facts=True)


def _rows(batch):
  """(token ids, loss mask) of every non-empty row."""
  return [(batch.tokens[r][batch.segment_ids[r] > 0], batch.loss_mask[r][batch.segment_ids[r] > 0])
          for r in range(batch.shape[0]) if batch.segment_ids[r].any()]


def _asked(tokenizer, ids, mask) -> list[str]:
  return [tokenizer.decode([int(i)]) for i, m in zip(ids, mask) if m]


def test_batches_are_a_pure_function_of_seed_and_step(corpus):
  first = pretrain_data.pretrain_batch(SECTION, corpus, 0, 7, pad_id=0)
  again = pretrain_data.pretrain_batch(SECTION, corpus, 0, 7, pad_id=0)
  for name in ("tokens", "positions", "segment_ids", "loss_mask"):
    np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
  for other in (pretrain_data.pretrain_batch(SECTION, corpus, 0, 8, pad_id=0),
                pretrain_data.pretrain_batch(SECTION, corpus, 1, 7, pad_id=0)):
    assert first.shape != other.shape or not np.array_equal(first.tokens, other.tokens)
  assert first.shape[0] == 32 and first.shape[1] % 16 == 0
  assert pretrain_data.pretrain_batch(SECTION, corpus, 0, 7, pad_id=0, row_multiple=6
                                      ).shape[0] == 36


def test_recall_rows_ask_values_stated_earlier_in_the_row(tokenizer, corpus):
  section = dict(SECTION, tasks="recall", recall_curriculum_steps=0, recall_facts=12,
                 recall_queries=5)
  batch = pretrain_data.pretrain_batch(section, corpus, 3, 0, pad_id=tokenizer.pad_token_id)
  rows = _rows(batch)
  assert len(rows) == 32
  for ids, mask in rows:
    text = tokenizer.decode([int(i) for i in ids])
    facts_text, *questions = text.split(" ?")
    facts = re.findall(r" ?(\w+) is (\w+) \.", facts_text)
    assert len(facts) == 12 and "".join(f" {k} is {v} ." for k, v in facts) == " " + \
        facts_text.lstrip()
    keys = [key for key, _ in facts]
    assert len(set(keys)) == 12 and set(keys + [v for _, v in facts]) <= set(synthetic.NAMES)
    stated = dict(facts)
    asked = [re.fullmatch(r" (\w+) is (\w+) \.", question).groups() for question in questions]
    assert len(asked) == 5 and len({key for key, _ in asked}) == 5
    assert all(stated[key] == value for key, value in asked)
    assert _asked(tokenizer, ids, mask) == [f" {value}" for _, value in asked]


def test_a_share_of_recall_rows_is_written_without_is(tokenizer, corpus):
  section = dict(SECTION, tasks="recall", recall_curriculum_steps=0, recall_facts=6,
                 recall_queries=3)
  plain_rows = 0
  for share, step in ((0.5, 0), (0.5, 1), (1.0, 0)):
    batch = pretrain_data.pretrain_batch(dict(section, recall_plain_share=share), corpus, 5,
                                         step, pad_id=tokenizer.pad_token_id)
    for ids, mask in _rows(batch):
      text = tokenizer.decode([int(i) for i in ids])
      plain = " is " not in text
      link = "" if plain else " is"
      facts_text, *questions = text.split(" ?")
      facts = re.findall(rf" ?(\w+){link} (\w+) \.", facts_text)
      assert "".join(f" {k}{link} {v} ." for k, v in facts) == " " + facts_text.lstrip()
      asked = [re.fullmatch(rf" (\w+){link} (\w+) \.", q).groups() for q in questions]
      assert len(facts) == 6 and len(asked) == 3 and set(asked) <= set(facts)
      assert _asked(tokenizer, ids, mask) == [f" {value}" for _, value in asked]
      plain_rows += plain
      assert plain or share < 1.0
  # all 32 rows at share 1, about half of the 64 at share 0.5
  assert 32 + 20 <= plain_rows <= 32 + 44


def test_recall_facts_grow_linearly_over_the_curriculum(tokenizer, corpus):
  section = dict(SECTION, recall_facts=16, recall_facts_start=3, recall_curriculum_steps=1000)
  # 3 + 13 * step / 1000, rounded down; 16 from step 1000 on.
  expected = {0: 3, 1: 3, 77: 4, 500: 9, 999: 15, 1000: 16, 5000: 16}
  assert {step: pretrain_data.recall_facts_at(section, step) for step in expected} == expected
  assert pretrain_data.recall_facts_at(dict(section, recall_curriculum_steps=0), 0) == 16
  batch = pretrain_data.pretrain_batch(dict(section, tasks="recall", recall_queries=16),
                                       corpus, 0, 500, pad_id=tokenizer.pad_token_id)
  for ids, mask in _rows(batch):
    text = tokenizer.decode([int(i) for i in ids])
    assert text.count(" is ") == 2 * 9 and text.count(" ?") == 9 and mask.sum() == 9


def test_copy_documents_qa_and_facts_rows_read_back_as_their_contexts(tokenizer, corpus):
  contexts = _contexts()
  rendered = [multihop.render_context(c.documents) for c in contexts]
  for task in ("copy", "documents", "qa", "facts"):
    batch = pretrain_data.pretrain_batch(dict(SECTION, tasks=task, max_len=96), corpus, 0, 2,
                                         pad_id=tokenizer.pad_token_id)
    for ids, mask in _rows(batch):
      ids = [int(i) for i in ids]
      text = tokenizer.decode(ids)
      if task == "copy":
        half = len(ids) // 2
        assert ids[:half] == ids[half:] and half == 48
        assert mask.tolist() == [0.0] * half + [1.0] * half
        assert any(tokenizer.decode(ids[:half]) in r for r in rendered)
      elif task == "documents":
        assert len(ids) == 96 and mask.tolist() == [0.0] + [1.0] * 95
        assert any(text in r for r in rendered)
      elif task == "facts":
        documents, *restated = text.split(" ? ")
        [r] = [r for r in rendered if r.endswith(documents) and all(
            f"{sentence}." in r for sentence in restated)]  # the documents' tail, cut
        assert len(ids) <= 96 and len(restated) == pretrain_data.FACTS_ASKED
        assert tokenizer.decode([i for i, m in zip(ids, mask) if m]) == "".join(
            " " + sentence.split(" ")[-1] for sentence in restated)
      else:
        matches = [(r, c) for r, c in zip(rendered, contexts)
                   if text.endswith(f"\n{c.questions[0].question} {c.questions[0].answers[0]}")]
        assert matches, text
        documents = text[:-len(f"\n{matches[0][1].questions[0].question} "
                               f"{matches[0][1].questions[0].answers[0]}")]
        assert matches[0][0].endswith(documents)  # the documents' tail, cut to max_len
        assert len(ids) <= 96 or not documents
        answer = tokenizer.decode([i for i, m in zip(ids, mask) if m])
        assert answer == " " + matches[0][1].questions[0].answers[0]


def test_the_reading_probe_asks_each_held_out_context_its_questions(tokenizer):
  world = dict(num_entities=4, num_cities=3, num_docs=6, hops=1, num_updates=1, doc_length=4)
  batch = pretrain_data.qa_probe_batch(tokenizer, dict(world, train_contexts=99,
                                                       questions_per_context=3),
                                       contexts=5, max_len=4096, seed=77)
  contexts = synthetic.generate_synthetic(5, seed=77, questions_per_context=3, **world)
  rows = _rows(batch)
  assert len(rows) == 5
  for (ids, mask), context in zip(rows, contexts):
    asked = "".join(f"\n{q.question} {q.answers[0]}" for q in context.questions)
    assert tokenizer.decode([int(i) for i in ids]) == (
        multihop.render_context(context.documents) + asked)
    assert _asked(tokenizer, ids, mask) == [" " + q.answers[0] for q in context.questions]
  again = pretrain_data.qa_probe_batch(tokenizer, dict(world, questions_per_context=3),
                                       contexts=5, max_len=4096, seed=77)
  np.testing.assert_array_equal(again.tokens, batch.tokens)


def test_the_restating_probe_restates_profile_sentences_up_to_their_object(tokenizer):
  world = dict(num_entities=4, num_cities=3, num_docs=6, hops=1, num_updates=1, doc_length=4)
  batch = pretrain_data.facts_probe_batch(tokenizer, dict(world, train_contexts=99),
                                          contexts=5, max_len=4096, seed=78)
  contexts = synthetic.generate_synthetic(5, seed=78, **world)
  rows = _rows(batch)
  assert len(rows) == 5
  for (ids, mask), context in zip(rows, contexts):
    rendered = multihop.render_context(context.documents)
    # profile sentences ending in a name, written by the generator's own templates
    profile = {template.format(s=s, o=o) for doc in context.documents
               for template in synthetic.FACT_TEMPLATES.values()
               for s in synthetic.NAMES if s == doc.title for o in synthetic.NAMES
               if template.format(s=s, o=o) in doc.text}
    text = tokenizer.decode([int(i) for i in ids])
    assert text.startswith(rendered)
    restated = text[len(rendered):].split(" ? ")[1:]
    assert len(restated) == pretrain_data.FACTS_ASKED == len(set(restated))
    assert all(sentence + "." in profile for sentence in restated), restated
    assert _asked(tokenizer, ids, mask) == [" " + s.split(" ")[-1] for s in restated]


def test_a_name_split_into_several_tokens_is_refused_naming_the_names():
  tokenizer = tokenizer_lib.train_bpe_tokenizer(["a b c d e f g"] * 4, 300)
  with pytest.raises(ValueError, match="one token with a leading space.*Baba"):
    pretrain_data.recall_tokens(tokenizer)


@pytest.mark.parametrize("tasks", ["recall:0", "recall:4,bogus:1", "recall,recall", "copy:x",
                                   "", "qa:-1"])
def test_a_bad_task_list_is_one_config_error_naming_the_field(tasks):
  c = config_lib.base_config()
  c.pretrain.tasks = tasks
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.validate(c)
  assert str(error.value).startswith("config field pretrain.tasks=")
  assert "\n" not in str(error.value)
  c.pretrain.tasks = "recall:4, copy:1,qa"
  assert config_lib.pretrain_tasks(c.pretrain.tasks) == {"recall": 4.0, "copy": 1.0, "qa": 1.0}


@pytest.mark.parametrize("field,value", [("steps", -1), ("recall_facts_start", 17),
                                         ("recall_facts", 378), ("batch_size", 0),
                                         ("probe_every_steps", -1),
                                         ("recall_plain_share", 1.5),
                                         ("recall_plain_share", -0.1)])
def test_bad_pretrain_fields_name_the_field(field, value):
  c = config_lib.base_config()
  c.pretrain[field] = value
  with pytest.raises(config_lib.ConfigError, match=f"pretrain.{field}="):
    config_lib.validate(c)


def test_the_pretrain_optimizer_fields_reach_its_optimizer_config():
  c = config_lib.base_config()
  assert c.pretrain.steps == 0  # no pretraining unless a config asks for it
  c.pretrain.update(steps=50, lr=3e-4, warmup_steps=5, schedule="cosine", weight_decay=0.1)
  optimizer = config_lib.optimizer_config(c, "pretrain")
  assert (optimizer.lr, optimizer.warmup_steps, optimizer.schedule, optimizer.weight_decay,
          optimizer.total_steps) == (3e-4, 5, "cosine", 0.1, 50)


def test_probe_accuracy_is_the_share_of_asked_values_the_argmax_gets(tokenizer):
  """On rows where transformers' argmax chose some asked tokens, the accuracy is their share."""
  import torch  # pylint: disable=g-import-not-at-top
  import _hf_reference  # pylint: disable=g-import-not-at-top
  reference = _hf_reference.make_reference(seed=1, vocab_size=2048)
  probe = pretrain_data.probe_batch(tokenizer, facts=4, queries=4, rows=40)
  assert probe.shape[0] == 40 and probe.loss_mask.sum() == 40 * 4
  tokens = np.array(probe.tokens)
  greedy = np.zeros(tokens.shape, bool)
  rng = np.random.default_rng(0)
  for t in np.flatnonzero(probe.loss_mask.any(0)):  # the asked values' positions
    with torch.no_grad():
      logits = reference.hf_model(input_ids=torch.from_numpy(tokens[:, :t].astype(np.int64))
                                  ).logits[:, -1].numpy()
    chosen = rng.random(len(tokens)) < 0.5
    argmax = logits.argmax(-1)
    tokens[:, t] = np.where(chosen, argmax, np.where(argmax == tokens[:, t],
                                                     (tokens[:, t] + 1) % 2048, tokens[:, t]))
    greedy[:, t] = chosen
  mask = np.asarray(probe.loss_mask) > 0
  batch = pretrain_data.rows_to_batch([(row.tolist(), m.tolist()) for row, m in
                                       zip(tokens, np.asarray(probe.loss_mask))], pad_id=0)
  got = pretrain_data.probe_accuracy(reference.config, reference.params, batch)
  assert got == pytest.approx(greedy[mask].mean(), abs=1e-6) and 0.3 < got < 0.7


def _env() -> dict[str, str]:
  return dict(os.environ, JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false",
              XLA_FLAGS="--xla_backend_optimization_level=0", HF_HUB_OFFLINE="1",
              TRANSFORMERS_OFFLINE="1",
              PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_pretraining_resumes_to_the_same_weights_and_exports_a_loadable_base(tmp_path,
                                                                             tokenizer_dir):
  import test_train_cli  # pylint: disable=g-import-not-at-top
  from atommem_jax.model import hf  # pylint: disable=g-import-not-at-top

  def command(workdir: str) -> list[str]:
    return [sys.executable, "-m", "atommem_jax.train", "--config",
            os.path.join(REPO, "configs", "pretrain_tiny.py"), "--workdir", workdir,
            "--config.model.preset=micro", f"--config.tokenizer={tokenizer_dir}",
            "--config.mesh.cpu_devices=0", "--config.data.synthetic.train_contexts=8",
            "--config.pretrain.checkpoint_every_steps=2", "--config.pretrain.steps=4",
            "--config.pretrain.warmup_steps=1", "--config.pretrain.batch_size=4",
            "--config.pretrain.max_len=64", "--config.pretrain.recall_facts=4",
            "--config.pretrain.recall_facts_start=2", "--config.pretrain.recall_queries=2",
            "--config.pretrain.recall_curriculum_steps=2", "--config.pretrain.probe_every_steps=2",
            "--config.pretrain.tasks=recall:1,qa:1,facts:1"]

  resumed, straight = str(tmp_path / "resumed"), str(tmp_path / "straight")
  test_train_cli._kill_after_checkpoint(command(resumed),
                                        os.path.join(resumed, "checkpoints", "pretrain"))
  outputs = {}
  for workdir in (resumed, straight):
    result = subprocess.run(command(workdir), cwd=REPO, env=_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs[workdir] = result.stdout
  assert "pretrain: resuming after step 2" in outputs[resumed]
  assert "pretrain step 4: loss" in outputs[straight] and "probe accuracy" in outputs[straight]
  assert "reading accuracy" in outputs[straight] and "restating accuracy" in outputs[straight]

  weights = [safetensors.numpy.load_file(os.path.join(workdir, "hf", "model.safetensors"))
             for workdir in (resumed, straight)]
  assert sorted(weights[0]) == sorted(weights[1])
  for name in weights[1]:
    np.testing.assert_allclose(weights[0][name], weights[1][name], rtol=1e-6, atol=1e-7,
                               err_msg=name)
  records = test_train_cli._metrics(straight)
  assert sorted(records) == [1, 2, 3, 4]
  for name in ("pretrain/probe_accuracy", "pretrain/reading_accuracy",
               "pretrain/restating_accuracy"):
    assert {step for step, r in records.items() if name in r} == {2, 4}, name
    assert all(0 <= records[s][name] <= 1 for s in (2, 4))
  losses = test_train_cli._losses(resumed, "pretrain")
  np.testing.assert_allclose([losses[s] for s in (3, 4)],
                             [test_train_cli._losses(straight, "pretrain")[s] for s in (3, 4)],
                             rtol=1e-6)

  config, params = hf.load_hf(os.path.join(straight, "hf"))
  assert config.hidden_size == 64
  assert config.vocab_size >= len(tokenizer_lib.load_tokenizer(tokenizer_dir))
  np.testing.assert_array_equal(np.asarray(params["embedder"]["embedding"]),
                                weights[1]["model.embed_tokens.weight"])
  for name in ("tokenizer_config.json", "tokenizer.json", "config.json"):
    assert os.path.isfile(os.path.join(straight, "hf", name))
  with open(os.path.join(straight, "hf", "config.json")) as f:
    assert json.load(f)["num_hidden_layers"] == 2

  # SFT after the complete pretraining starts from the pretrained base: at a learning rate of
  # 1e-12 its one step leaves the base's weights, and its metrics follow pretraining's steps.
  result = subprocess.run(command(straight) + ["--config.sft.steps=1", "--config.sft.lr=1e-12"],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "pretrain: resuming after step 4" in result.stdout
  after_sft = safetensors.numpy.load_file(os.path.join(straight, "hf", "model.safetensors"))
  for name in weights[1]:
    np.testing.assert_allclose(after_sft[name], weights[1][name], atol=1e-8, err_msg=name)
  assert sorted(test_train_cli._losses(straight, "sft")) == [5]
