"""Teacher-forced accuracy of a policy on the oracle's memory writes (the demo's failure analysis).

  python bench/memory_writes.py --config configs/demo.py \
      --weights models/tiny_base --weights workdir/demo/checkpoints/sft [--contexts 256]

The oracle (`agent.oracle.OraclePolicy`, the config's options) runs on held-out synthetic
contexts (seed config.seed + 1, as `atommem_jax.evaluate`); in each of its responses every
Create and Update content reads "<question> <sentence>." ("Who is the employer of Vuti? Vuti
works for Mato."). Each policy reads the oracle's prompt and response (teacher forcing), and
its argmax is scored at
- the value: the sentence's last token before the full stop (" Mato"), the in-context lookup
  that decides whether the memory is right;
- the restated prefix: every token of the sentence before the value (" Vuti works for"), which
  the policy must write from the question before it can look the value up.
It separates a lookup worn down by training from a policy that restates the wrong relation or
writes at the wrong chunk (what greedy EM mixes together). --weights takes a Hugging Face
directory or a training run's orbax checkpoint directory (its recorded model config is used).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import tempfile
from typing import Sequence

import numpy as np

_WRITE = re.compile(r"<(add_memory|modify_memory)>([^<]*?)\.</(?:add_memory|modify_memory)>")


@dataclasses.dataclass(frozen=True)
class Write:
  """One memory write of an oracle response: token ids and the positions scored."""
  tokens: tuple[int, ...]  # prompt + response
  value: int  # position of the value token
  prefix: tuple[int, ...]  # positions of the restated sentence before the value
  kind: str  # "add_memory" (Create) or "modify_memory" (Update)


def memory_writes(examples, tokenizer) -> list[Write]:
  """The writes of the oracle `examples` (prompt ids, response ids) whose content is
  "<question>? <sentence>." with the sentence's end on a token boundary."""
  writes = []
  for example in examples:
    response = list(example.response_ids)
    ends, text = [], ""
    for i in range(len(response)):  # character end of each response token
      text = tokenizer.decode(response[:i + 1])
      ends.append(len(text))
    offset = len(example.prompt_ids)
    for match in _WRITE.finditer(text):
      content_start, stop = match.start(2), match.end(2)
      question_end = match.group(2).find("?")
      if stop not in ends or question_end < 0:
        continue
      sentence_start = content_start + question_end + 1
      value = ends.index(stop)
      prefix = tuple(offset + i for i in range(value) if ends[i] > sentence_start)
      writes.append(Write(tuple(example.prompt_ids) + tuple(response), offset + value, prefix,
                          match.group(1)))
  return writes


def score(writes: Sequence[Write], predict) -> dict[str, float]:
  """Accuracy per write kind and part: `predict(tokens [T]) -> argmax next-token ids [T]`."""
  hits: dict[str, list[float]] = {}
  for write in writes:
    predicted = predict(np.asarray(write.tokens, np.int32))
    def right(position: int) -> bool:
      return int(predicted[position - 1]) == write.tokens[position]
    value_ok, prefix_ok = right(write.value), all(right(p) for p in write.prefix)
    for name, ok in (("value", value_ok), ("prefix", prefix_ok),
                     ("both", value_ok and prefix_ok)):
      hits.setdefault(f"{write.kind} {name}", []).append(float(ok))
  return {name: float(np.mean(values)) for name, values in sorted(hits.items())}


def _load(weights: str, config, mesh, tokenizer):
  """(model config, params) of a Hugging Face directory or a run's checkpoints, through
  `atommem_jax.evaluate.load_model` (a run's recorded model config wins)."""
  from atommem_jax import fileio  # pylint: disable=g-import-not-at-top
  from atommem_jax.evaluate import load_model  # pylint: disable=g-import-not-at-top
  from atommem_jax.train import run_files  # pylint: disable=g-import-not-at-top
  if fileio.exists(fileio.join(weights, "config.json")) and not fileio.exists(
      fileio.join(weights, "run.json")):
    return load_model(config, mesh, tokenizer, hf_dir=weights, checkpoint_dir=None,
                      trained=None)
  checkpoint_dir, workdir = run_files.find_checkpoints(weights)
  return load_model(config, mesh, tokenizer, hf_dir=None, checkpoint_dir=checkpoint_dir,
                    trained=run_files.trained_model(workdir))


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/demo.py")
  parser.add_argument("--weights", action="append", required=True,
                      help="a Hugging Face directory or a run's checkpoint directory; repeat")
  parser.add_argument("--contexts", type=int, default=256)
  parser.add_argument("--seed", type=int, default=0, help="config.seed (held-out: seed + 1)")
  args = parser.parse_args(argv)
  if args.contexts < 1:
    parser.error("--contexts must be >= 1")
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from atommem_jax import config_lib  # pylint: disable=g-import-not-at-top
  from atommem_jax.model import qwen3  # pylint: disable=g-import-not-at-top
  from atommem_jax.train import contexts as contexts_lib  # pylint: disable=g-import-not-at-top
  from atommem_jax.train import setup  # pylint: disable=g-import-not-at-top
  from atommem_jax.train import sft_data  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config_file(args.config)
  config.seed = args.seed
  job = setup.prepare(config, tempfile.mkdtemp(prefix="memory_writes_"))
  held_out = contexts_lib.synthetic_contexts(config, "eval")[:args.contexts]
  examples, _ = sft_data.oracle_examples(held_out, job.env_config, job.tokenizer, job.embedder,
                                         config_lib.oracle_options(config))
  writes = memory_writes(examples, job.tokenizer)
  length = max(len(w.tokens) for w in writes)
  counts = {kind: sum(w.kind == kind for w in writes) for kind in ("add_memory", "modify_memory")}
  print(f"{len(writes)} oracle memory writes on {len(held_out)} held-out contexts "
        f"(Create {counts['add_memory']}, Update {counts['modify_memory']})")
  print("| weights | Create value | Create prefix | Create both | Update value | Update prefix "
        "| Update both |\n|---|---|---|---|---|---|---|")
  for weights in args.weights:
    model_config, params = _load(weights, config, job.mesh, job.tokenizer)
    argmax = jax.jit(lambda p, x, c=model_config: jnp.argmax(qwen3.logits(c, p, x), -1))

    def predict(tokens: np.ndarray, params=params, argmax=argmax) -> np.ndarray:
      padded = np.zeros((1, length), np.int32)  # one shape: one compile
      padded[0, :len(tokens)] = tokens
      return np.asarray(argmax(params, jnp.asarray(padded)))[0]

    row = score(writes, predict)
    print(f"| {weights} | " + " | ".join(
        f"{row.get(f'{kind} {name}', float('nan')):.3f}"
        for kind in ("add_memory", "modify_memory") for name in ("value", "prefix", "both"))
        + " |", flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
