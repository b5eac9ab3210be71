"""Teacher trajectories: collect -> chat-message JSON lines -> data.sft_file, and the chat
format that transformers' apply_chat_template (TRL's format) takes."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import datasets
import jax
import pytest

from atommem_jax import collect
from atommem_jax import config_lib
from atommem_jax.agent import env as env_lib
from atommem_jax.agent import oracle
from atommem_jax.data import multihop
from atommem_jax.data import protocol
from atommem_jax.data import tokenizer as tokenizer_lib
from atommem_jax.memory import embed
from atommem_jax.model import config as model_config_lib
from atommem_jax.model import hf
from atommem_jax.model import qwen3
from atommem_jax.train import sft_data
import _paths

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=None)
def _tokenizer():
  try:
    return tokenizer_lib.load_tokenizer()
  except FileNotFoundError as e:
    pytest.skip(f"the Qwen3 tokenizer is an optional asset: {e}")


def _config():
  config = config_lib.load_config_file("tiny")
  config.tokenizer = "qwen3"
  config.env.update(chunk_tokens=512, chunk_overlap=50, max_chunks=8, max_steps=40,
                    max_response_chars=4000, max_content_chars=2000, max_retrieved_tokens=512,
                    prompt_template="")
  return config


@functools.lru_cache(maxsize=None)
def _contexts():
  samples = multihop.read_dataset("hotpotqa", str(_paths.HOTPOTQA))
  return tuple(protocol.iter_contexts(samples[:8], num_docs=12, seed=0, pool=samples))


def _reference_results(config):
  """The oracle's episodes, run here without collect."""
  env = env_lib.MemoryEnv(config_lib.env_config(config), _tokenizer(),
                          embed.make_embedder(config.embedder))
  policy = oracle.OraclePolicy(enabled=config_lib.env_config(config).enabled_actions,
                               **config_lib.oracle_options(config))
  return oracle.run_episodes(env, policy, _contexts())


def test_oracle_trajectories_round_trip_through_sft_file(tmp_path):
  config, tokenizer = _config(), _tokenizer()
  out = str(tmp_path / "sft.jsonl")
  progress = []
  counts = collect.collect(_contexts(), collect.scripted_runner("oracle", config, tokenizer),
                           batch_size=3, min_reward=0.5, out=out, progress=progress.append)
  reference = _reference_results(config)
  kept = [r for r in reference if r.reward >= 0.5]
  assert 0 < len(kept) and counts.kept == len(kept) and counts.contexts == len(_contexts())
  assert len(progress) == -(-len(_contexts()) // 3)  # one line per batch of 3
  assert progress[-1].startswith(f"collect: {len(_contexts())}/{len(_contexts())} contexts")
  turns = [turn for result in kept for turn in result.trajectory]
  assert counts.rows == len(turns)
  # Read back by data.sft_file: the same prompt and response tokens as the episodes had.
  examples = sft_data.file_examples(out, tokenizer)
  eos = tokenizer.eos_token_id
  assert [(list(e.prompt_ids), list(e.response_ids)) for e in examples] == [
      (list(turn.prompt_token_ids),
       tokenizer.encode(turn.response, add_special_tokens=False) + [eos]) for turn in turns]


def test_collected_file_is_chat_format(tmp_path):
  config, tokenizer = _config(), _tokenizer()
  out = str(tmp_path / "sft.jsonl")
  collect.collect(_contexts()[:2], collect.scripted_runner("oracle", config, tokenizer),
                  batch_size=2, min_reward=0.0, out=out, progress=lambda line: None)
  table = datasets.load_dataset("json", data_files=out, split="train")
  assert table.column_names == ["messages"]
  turns = [turn for r in _reference_results(config)[:2] for turn in r.trajectory]
  assert len(table) == len(turns)
  for row, turn in zip(table, turns):
    messages = row["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[-1]["content"] == turn.response
    # The template's defaults, as TRL applies it: the prompt is the one the policy saw.
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt == turn.prompt_text
    whole = tokenizer.apply_chat_template(messages, tokenize=False)
    assert whole.startswith(prompt)
    assert whole.endswith(turn.response.strip() + "<|im_end|>\n")


def test_min_reward_filters_and_nothing_kept_is_an_error(tmp_path):
  config, tokenizer = _config(), _tokenizer()
  with pytest.raises(ValueError, match="no episode reached reward 2.0"):
    collect.collect(_contexts()[:2], collect.scripted_runner("memagent", config, tokenizer),
                    batch_size=2, min_reward=2.0, out=str(tmp_path / "x.jsonl"),
                    progress=lambda line: None)
  assert not (tmp_path / "x.jsonl").exists()


class _CharTokenizer:  # characters as token ids; eos 0; no chat template
  eos_token_id = 0

  def encode(self, text, add_special_tokens=False):
    return [ord(c) for c in text]


def _chat(*roles):
  return {"messages": [{"role": role, "content": f"{role} text"} for role in roles]}


def test_sft_file_reads_both_formats(tmp_path):
  path = tmp_path / "mixed.jsonl"
  path.write_text("\n".join([json.dumps(_chat("system", "user", "assistant")), "",
                             json.dumps({"prompt": "p", "completion": "c"})]) + "\n")
  examples = sft_data.file_examples(str(path), _CharTokenizer())
  prompt = "[system]\nsystem text\n\n[user]\nuser text\n\n[assistant]\n"
  assert [(list(e.prompt_ids), list(e.response_ids)) for e in examples] == [
      ([ord(c) for c in prompt], [ord(c) for c in "assistant text"] + [0]),
      ([ord("p")], [ord("c"), 0])]


@pytest.mark.parametrize("line, message", [
    ("{not json", r":2: not valid JSON"),
    (json.dumps({"messages": "hi"}), r":2: field 'messages' should be a list"),
    (json.dumps(_chat("user", "assistant", "user")), r":2: field 'messages' has roles"),
    (json.dumps(_chat("user", "assistant", "user", "assistant")),
     r":2: field 'messages' has roles .*one line per assistant turn"),
    (json.dumps({"messages": [{"role": "user", "content": "q"},
                              {"role": "tool", "content": "a"}]}),
     r":2: field 'messages\[1\]' should be"),
    (json.dumps({"messages": [{"role": "user", "content": 3}, {"role": "assistant",
                                                              "content": "a"}]}),
     r":2: field 'messages\[0\]' should be"),
    (json.dumps({"text": "plain"}), r":2: expected a JSON object with 'messages'"),
])
def test_sft_file_bad_rows_name_file_and_line(tmp_path, line, message):
  path = tmp_path / "bad.jsonl"
  path.write_text(json.dumps(_chat("user", "assistant")) + "\n" + line + "\n")
  with pytest.raises(multihop.DataError, match=r"bad\.jsonl" + message):
    sft_data.file_examples(str(path), _CharTokenizer())


def test_cli_writes_the_file_and_reports_bad_flags(tmp_path):
  _tokenizer()
  data = str(tmp_path / "contexts.jsonl")
  multihop.save_long_contexts(list(_contexts()[:2]), data)
  out = str(tmp_path / "sft.jsonl")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  common = [sys.executable, "-m", "atommem_jax.collect", "--config=configs/tiny.py",
            "--config.tokenizer=qwen3", "--config.env.chunk_tokens=512", f"--data={data}",
            f"--out={out}"]
  run = subprocess.run(common + ["--teacher=oracle", "--min_reward=0"], cwd=_REPO, env=env,
                       capture_output=True, text=True, timeout=240)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "collect: 2/2 contexts" in run.stderr and "wrote" in run.stdout
  assert len(sft_data.file_examples(out, _tokenizer())) > 0
  bad = subprocess.run(common + ["--teacher=gpt"], cwd=_REPO, env=env, capture_output=True,
                       text=True, timeout=240)
  assert bad.returncode != 0 and "--teacher 'gpt'" in bad.stderr
  assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_hf_teacher_samples_at_its_temperature_and_round_trips(tmp_path, monkeypatch):
  model_config = model_config_lib.preset("micro-qwen-vocab")
  hf_dir = str(tmp_path / "hf")
  hf.save_hf(model_config, qwen3.init_params(model_config, jax.random.key(1)), hf_dir,
             tokenizer_dir=tokenizer_lib.qwen3_tokenizer_dir())
  config = config_lib.load_config_file("tiny")
  config.tokenizer = "qwen3"
  config.data.synthetic.doc_length = 4
  config.rollout.update(max_new_tokens=4, prompt_buckets=(512,))
  config.eval.batch_size = 8
  samplings = []
  real_loop = collect.episode.EpisodeLoop
  monkeypatch.setattr(collect.episode, "EpisodeLoop", lambda *args, **kwargs: (
      samplings.append(kwargs["sampling"]), real_loop(*args, **kwargs))[1])
  tokenizer = tokenizer_lib.load_tokenizer(
      tokenizer_lib.resolve_tokenizer_dir(config.tokenizer, hf_dir))
  contexts = collect.load_contexts(config, None, limit=2)
  out = str(tmp_path / "sft.jsonl")
  counts = collect.collect(contexts, collect.model_runner(hf_dir, config, tokenizer, 0.6),
                           batch_size=8, min_reward=0.0, out=out, progress=lambda line: None)
  assert [(s.temperature, s.greedy) for s in samplings] == [(0.6, False)]
  assert counts.kept == 2 and counts.rows > 0
  rows = [json.loads(line) for line in open(out, encoding="utf-8")]
  examples = sft_data.file_examples(out, tokenizer)
  assert len(examples) == len(rows) == counts.rows
  for row, example in zip(rows, examples):
    response = tokenizer.encode(row["messages"][-1]["content"], add_special_tokens=False)
    assert list(example.response_ids[:len(response)]) == response
