"""Run files on object storage (`atommem_jax.fileio`), tested with fsspec's memory:// store.

References: fsspec's own reads of what our code wrote, TensorBoard records decoded here from
the TFRecord framing with the Event protobuf, and the same writes to a local directory.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import fsspec
import numpy as np
import pytest

from atommem_jax import fileio
from atommem_jax.train import checkpoint as checkpoint_lib
from atommem_jax.train import metrics as metrics_lib
from atommem_jax.train import run_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def memory():
  """fsspec's in-memory file system, emptied before and after the test."""
  fs = fsspec.filesystem("memory")
  fs.store.clear()
  fs.pseudo_dirs.clear()
  fs.pseudo_dirs.append("")
  yield fs
  fs.store.clear()


def test_protocols_and_joins():
  assert fileio.protocol("gs://bucket/run") == "gs"
  assert fileio.protocol("/tmp/run") is None and fileio.protocol("file:///tmp/run") is None
  assert fileio.join("gs://bucket/run", "hf", "config.json") == "gs://bucket/run/hf/config.json"
  assert fileio.join("run", "hf") == os.path.join("run", "hf")
  assert fileio.join("file:///tmp/run", "hf") == os.path.join("/tmp/run", "hf")
  assert fileio.canonical("file:///tmp/run") == "/tmp/run"
  assert fileio.canonical("gs://bucket/run") == "gs://bucket/run"
  assert fileio.abspath("gs://bucket/run") == "gs://bucket/run"
  assert fileio.abspath("run") == os.path.abspath("run")
  assert fileio.dirname("gs://bucket/run/checkpoints") == "gs://bucket/run"
  assert fileio.dirname("/tmp/run/checkpoints") == "/tmp/run"


def test_reads_and_writes_on_a_url_and_on_disk(memory, tmp_path):
  for root in ("memory://bucket/run", "file://" + str(tmp_path / "run")):
    fileio.makedirs(root)
    path = fileio.join(root, "a.json")
    assert not fileio.exists(path) and not fileio.isfile(path)
    fileio.write_text(path, '{"x": 1}')
    assert fileio.isfile(path) and fileio.isdir(root) and not fileio.isdir(path)
    assert json.loads(fileio.read_text(path)) == {"x": 1}
    with pytest.raises(FileNotFoundError):
      fileio.read_bytes(fileio.join(root, "missing"))
  assert memory.cat_file("/bucket/run/a.json") == b'{"x": 1}'
  assert os.listdir(tmp_path / "run") == ["a.json"]  # no temporary file left behind


def test_directories_go_up_whole_and_come_back(memory, tmp_path):
  with fileio.local_dir_to_write("memory://bucket/tok") as local:
    for name in ("a.txt", "b.txt"):
      with open(os.path.join(local, name), "w") as f:
        f.write(name * 3)
  assert sorted(memory.ls("/bucket/tok", detail=False)) == ["/bucket/tok/a.txt",
                                                            "/bucket/tok/b.txt"]
  with pytest.raises(RuntimeError):  # an error inside the block uploads nothing
    with fileio.local_dir_to_write("memory://bucket/broken") as local:
      with open(os.path.join(local, "half.txt"), "w") as f:
        f.write("half")
      raise RuntimeError("crash while writing")
  assert not memory.exists("/bucket/broken/half.txt")
  with pytest.raises(RuntimeError):  # likewise for a single file
    with fileio.local_file_to_write("memory://bucket/broken/one.txt") as local:
      with open(local, "w") as f:
        f.write("half")
      raise RuntimeError("crash while writing")
  assert not memory.exists("/bucket/broken/one.txt")
  with fileio.local_dir_to_read("memory://bucket/tok") as local:
    assert open(os.path.join(local, "b.txt")).read() == "b.txtb.txtb.txt"
  with pytest.raises(FileNotFoundError):
    fileio.download_dir("memory://bucket/none", str(tmp_path / "none"))


def test_rewritten_file_appends_and_uploads_at_most_every_interval(memory):
  memory.pipe_file("/bucket/log.txt", b"old\n")
  f = fileio.RewrittenFile("memory://bucket/log.txt", min_interval_s=3600.0)
  f.write("one\n")
  f.flush(force=False)  # the first upload is never held back
  assert memory.cat_file("/bucket/log.txt") == b"old\none\n"
  f.write(b"two\n")
  f.flush(force=False)  # within the interval: not uploaded yet
  assert memory.cat_file("/bucket/log.txt") == b"old\none\n"
  f.close()
  assert memory.cat_file("/bucket/log.txt") == b"old\none\ntwo\n"
  with pytest.raises(ValueError):
    f.write("after close")


def _tensorboard_scalars(data: bytes) -> list[tuple[int, str, float]]:
  """(step, tag, value) of every scalar in an event file: TFRecord framing (length, its CRC,
  payload, its CRC) around Event protobufs."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  scalars, offset = [], 0
  while offset < len(data):
    (length,) = struct.unpack("<Q", data[offset:offset + 8])
    event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
    offset += 12 + length + 4
    scalars += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
  return scalars


def test_metric_writer_takes_a_file_url(tmp_path):
  _write_metrics("file://" + str(tmp_path / "run"))
  assert "metrics.jsonl" in os.listdir(tmp_path / "run")
  assert any("tfevents" in name for name in os.listdir(tmp_path / "run"))


def _write_metrics(log_dir: str) -> None:
  with metrics_lib.MetricWriter(log_dir) as writer:
    writer.write(1, {"loss": np.float32(2.5), "kl": 0.125}, prefix="sft/")
    writer.write(2, {"loss": float("nan")}, prefix="sft/")


def test_metric_writer_on_a_url_writes_what_it_writes_on_disk(memory, tmp_path):
  _write_metrics("memory://bucket/run")
  _write_metrics(str(tmp_path))
  _write_metrics("memory://bucket/run")  # a resumed run adds to the JSON lines
  local_lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  remote_lines = memory.cat_file("/bucket/run/metrics.jsonl").decode().splitlines()
  strip = lambda line: {k: v for k, v in json.loads(line).items() if k != "time"}
  assert [strip(line) for line in remote_lines] == [strip(line) for line in local_lines] * 2
  events = [p for p in memory.ls("/bucket/run", detail=False) if "tfevents" in p]
  local_events = [p for p in os.listdir(tmp_path) if "tfevents" in p]
  assert events and local_events
  remote = _tensorboard_scalars(memory.cat_file(events[0]))
  local = _tensorboard_scalars((tmp_path / local_events[0]).read_bytes())
  assert remote[:2] == local[:2] == [(1, "sft/loss", 2.5), (1, "sft/kl", 0.125)]
  assert remote[2][:2] == (2, "sft/loss") and np.isnan(remote[2][2])


def test_run_records_on_a_url(memory):
  from atommem_jax.model import config as model_config_lib  # pylint: disable=g-import-not-at-top
  config = model_config_lib.preset("micro")
  run_files.write("memory://bucket/run", config, "memory://bucket/run/tokenizer")
  assert run_files.trained_model("memory://bucket/run") == (config,
                                                           "memory://bucket/run/tokenizer")
  assert run_files.trained_model("memory://bucket/elsewhere") is None


def test_orbax_refuses_a_protocol_it_cannot_write():
  with pytest.raises(ValueError, match="memory://.*gs://, s3://"):
    checkpoint_lib.Checkpointer("memory://bucket/run/checkpoints/sft")


_REMOTE_RUN = r"""
import json
import sys
import fsspec
from atommem_jax import config_lib
from atommem_jax.train import checkpoint, loop, stages
config = config_lib.load_config_file("tiny")
config.update_from_flattened_dict(json.loads(sys.argv[2]))
# orbax cannot write memory:// (the test's stand-in for gs://): checkpoints go to a local dir
stages.checkpointer = lambda job, stage: checkpoint.Checkpointer(
    f"{sys.argv[1]}/checkpoints/{stage}", max_to_keep=2, async_save=False)
loop.run(config, "memory://bucket/run")
fsspec.filesystem("memory").get("/bucket/run", f"{sys.argv[1]}/copy", recursive=True)
"""


def test_training_job_with_its_workdir_on_a_url(tmp_path):
  overrides = {"sft.steps": 2, "grpo.steps": 2, "eval.every_steps": 1, "data.synthetic.train_contexts": 8,
               "data.synthetic.eval_contexts": 2, "eval.batch_size": 2,
               "grpo.questions_per_batch": 2, "grpo.group_size": 2, "sft.batch_size": 4,
               "env.max_steps": 6, "rollout.max_new_tokens": 16, "mesh.data": 1}
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run([sys.executable, "-c", _REMOTE_RUN, str(tmp_path),
                           json.dumps(overrides)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "exported the final policy to memory://bucket/run/hf" in result.stdout
  copy = tmp_path / "copy"
  assert {"config.json", "model_config.json", "run.json", "evaluations.json", "metrics.jsonl",
          "tokenizer", "hf"} <= set(os.listdir(copy))
  assert json.loads((copy / "run.json").read_text()) == {
      "tokenizer_dir": "memory://bucket/run/tokenizer"}
  assert set(json.loads((copy / "evaluations.json").read_text())) == {"init", "sft", "grpo"}
  steps = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
  assert any("sft/loss" in s for s in steps) and any("grpo/loss" in s for s in steps)
  # periodic evaluations are named by their stage's step and logged at the run's step
  logged = {name: s["step"] for s in steps for name in s if name.endswith("/exact_match")}
  assert logged["eval/sft_step1/exact_match"] == 1
  assert logged["eval/grpo_step1/exact_match"] == 3 and logged["grpo/exact_match"] == 4
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(copy))
  assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(copy / "hf"))
  assert "tokenizer_config.json" in os.listdir(copy / "tokenizer")
  assert os.path.isdir(tmp_path / "checkpoints" / "grpo")


def test_data_files_and_model_configs_on_a_url(memory, tmp_path):
  from atommem_jax import config_lib  # pylint: disable=g-import-not-at-top
  from atommem_jax.data import multihop  # pylint: disable=g-import-not-at-top
  from atommem_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  from atommem_jax.train import sft_data  # pylint: disable=g-import-not-at-top
  contexts = synthetic.generate_synthetic(3, seed=0, num_entities=4, num_cities=3, num_docs=6,
                                          hops=1, num_updates=1, doc_length=4)
  for suffix in (".jsonl", ".parquet"):
    multihop.save_long_contexts(contexts, f"memory://bucket/data/contexts{suffix}")
    multihop.save_long_contexts(contexts, str(tmp_path / f"contexts{suffix}"))
    assert multihop.load_long_contexts(f"memory://bucket/data/contexts{suffix}") == contexts
    assert (memory.cat_file(f"/bucket/data/contexts{suffix}")
            == (tmp_path / f"contexts{suffix}").read_bytes())
  with pytest.raises(FileNotFoundError):
    multihop.load_long_contexts("memory://bucket/data/missing.jsonl")

  class Tokenizer:  # characters as token ids; eos 0
    eos_token_id = 0

    def encode(self, text, add_special_tokens=False):
      return [ord(c) for c in text]

  # U+2028 is legal inside a JSON string and must not split a record
  lines = [json.dumps({"prompt": "p\u2028q", "completion": "c"}), "",
           json.dumps({"prompt": "r", "completion": "d"})]
  memory.pipe_file("/bucket/data/sft.jsonl", "\n".join(lines).encode())
  examples = sft_data.file_examples("memory://bucket/data/sft.jsonl", Tokenizer())
  assert [(list(e.prompt_ids), list(e.response_ids)) for e in examples] == [
      ([ord("p"), 0x2028, ord("q")], [ord("c"), 0]), ([ord("r")], [ord("d"), 0])]

  config = config_lib.load_config_file("tiny")
  hf_config = {"model_type": "qwen3", "vocab_size": 512, "hidden_size": 64,
               "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "head_dim": 16, "tie_word_embeddings": True,
               "rms_norm_eps": 1e-6, "rope_theta": 1e6, "max_position_embeddings": 1024}
  memory.pipe_file("/bucket/hf/config.json", json.dumps(hf_config).encode())
  config.model.hf_dir = "memory://bucket/hf"
  model_config = config_lib.model_config(config)
  assert (model_config.vocab_size, model_config.hidden_size, model_config.head_dim) == (512, 64, 16)
  config.model.hf_dir = "memory://bucket/none"
  with pytest.raises(config_lib.ConfigError, match="config.json"):
    config_lib.model_config(config)
