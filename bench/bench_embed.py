r"""Qwen3-Embedding step cost: our Flax path ("host": one host CPU device; "accelerator": the
first device of the default backend) against sentence-transformers (torch), same directory and texts.

The model is random, with Qwen3-Embedding-0.6B's widths (D 1024, F 3072, 16/8 heads, its
151,669-token vocabulary) and --layers layers (the 0.6B has 28; time grows about linearly),
written in the published layout with the real Qwen3 tokenizer. One "step" embeds what one
environment step of --episodes episodes asks for: two stored texts of 40-120 words and one
query per episode, in one embed_documents and one embed_queries call. Run once per device
count if you like (XLA_FLAGS must be set before JAX starts):

  .venv/bin/python bench/bench_embed.py
  XLA_FLAGS=--xla_force_host_platform_device_count=8 .venv/bin/python bench/bench_embed.py
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax
import numpy as np

from atommem_jax.data import tokenizer as tokenizer_lib
from atommem_jax.memory import qwen3_embed
from atommem_jax.model import config as config_lib
from atommem_jax.model import hf
from atommem_jax.model import qwen3

_WORDS = ("river city music album founded year director film born married country capital "
          "university team season played won league award novel author published").split()
_APPEND_END = {
    "type": "TemplateProcessing",
    "single": [{"Sequence": {"id": "A", "type_id": 0}},
               {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}],
    "pair": [{"Sequence": {"id": "A", "type_id": 0}},
             {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
             {"Sequence": {"id": "B", "type_id": 1}},
             {"SpecialToken": {"id": "<|endoftext|>", "type_id": 1}}],
    "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [151643],
                                         "tokens": ["<|endoftext|>"]}},
}


def write_model(path: str, layers: int) -> None:
  """A random Qwen3-Embedding-0.6B-wide model with `layers` layers, published layout."""
  config = config_lib.preset("qwen3-embedding-0.6b").replace(num_hidden_layers=layers)
  params = qwen3.init_params(config, jax.random.key(0))
  hf.save_hf(config, params, path, tokenizer_dir=tokenizer_lib.qwen3_tokenizer_dir())
  tokenizer_json = os.path.join(path, "tokenizer.json")
  with open(tokenizer_json) as f:
    content = json.load(f)
  content["post_processor"] = _APPEND_END
  with open(tokenizer_json, "w") as f:
    json.dump(content, f)
  files = {
      "modules.json": [{"idx": 0, "name": "0", "path": "",
                        "type": "sentence_transformers.models.Transformer"},
                       {"idx": 1, "name": "1", "path": "1_Pooling",
                        "type": "sentence_transformers.models.Pooling"},
                       {"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"}],
      "sentence_bert_config.json": {"max_seq_length": 8192, "do_lower_case": False},
      "1_Pooling/config.json": {"word_embedding_dimension": config.hidden_size,
                                "pooling_mode_lasttoken": True, "include_prompt": True},
  }
  for name, content in files.items():
    os.makedirs(os.path.dirname(os.path.join(path, name)), exist_ok=True)
    with open(os.path.join(path, name), "w") as f:
      json.dump(content, f)
  os.makedirs(os.path.join(path, "2_Normalize"), exist_ok=True)


def step_texts(episodes: int, rng: np.random.Generator) -> tuple[list[str], list[str]]:
  def text(low, high):
    return " ".join(rng.choice(_WORDS, size=rng.integers(low, high)))
  return ([text(40, 120) for _ in range(2 * episodes)], [text(8, 24) for _ in range(episodes)])


def time_steps(embed_documents, embed_queries, steps, episodes) -> tuple[float, float]:
  """(median seconds of `steps` new steps, which may compile new shapes; median of the same
  steps again, every shape compiled: the steady state of a long run)."""
  rng = np.random.default_rng(0)
  first, again = [], []
  for _ in range(steps):
    documents, queries = step_texts(episodes, rng)
    for times in (first, again):
      start = time.perf_counter()
      embed_documents(documents)
      embed_queries(queries)
      times.append(time.perf_counter() - start)
  return float(np.median(first)), float(np.median(again))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--episodes", type=int, default=16)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--placements", default="host,accelerator,torch")
  parser.add_argument("--out", help="also write the markdown table here")
  args = parser.parse_args()
  lines = []

  def emit(line: str) -> None:
    print(line, flush=True)
    lines.append(line)

  with tempfile.TemporaryDirectory() as path:
    write_model(path, args.layers)
    emit(f"devices: {jax.device_count()} x {jax.devices()[0].platform}, cpu cores: "
         f"{os.cpu_count()}, layers: {args.layers}, episodes per step: {args.episodes}\n")
    emit("| placement | new step s (may compile) | step s, shapes compiled |")
    emit("|---|---|---|")
    for placement in args.placements.split(","):
      if placement == "torch":
        import sentence_transformers  # pylint: disable=g-import-not-at-top
        model = sentence_transformers.SentenceTransformer(path, device="cpu")
        prompt = qwen3_embed.QUERY_PROMPT.format(task="t")
        first, step = time_steps(lambda t: model.encode(t, batch_size=64),
                                 lambda t: model.encode([prompt + q for q in t], batch_size=64),
                                 args.steps, args.episodes)
      else:
        embedder = qwen3_embed.Qwen3Embedder(path, task="t", device=placement)
        first, step = time_steps(embedder.embed_documents, embedder.embed_queries,
                                 args.steps, args.episodes)
      emit(f"| {placement} | {first:.2f} | {step:.2f} |")
  if args.out:
    with open(args.out, "w") as f:
      f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
