"""The pretrained base shipped in models/tiny_base: it loads as a Hugging Face Qwen3 through
`load_hf` (the path a user takes with Qwen3-8B), `make demo`'s config starts from it with its
own tokenizer, and it still scores on the lookup probe what its model card says."""

from __future__ import annotations

import os
import re

import jax.numpy as jnp
import pytest

from atommem_jax import config_lib
from atommem_jax.data import tokenizer as tokenizer_lib
from atommem_jax.model import hf
from atommem_jax.train import pretrain_data
from atommem_jax.train import setup

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_DIR = os.path.join(_REPO, "models", "tiny_base")
_CARD_PROBES = {
    "lookup": re.compile(r"lookup probe accuracy \(16 facts, 16 questions, 256 rows\): "
                         r"\*\*([0-9]\.[0-9]{3})\*\*"),
    "restating": re.compile(r"restating probe accuracy \(8 sentences over each of 256 "
                            r"held-out contexts\): \*\*([0-9]\.[0-9]{3})\*\*"),
}


def _card_probe_accuracy(probe: str = "lookup") -> float:
  with open(os.path.join(BASE_DIR, "README.md"), encoding="utf-8") as f:
    found = _CARD_PROBES[probe].findall(f.read())
  assert len(found) == 1, f"the model card states the {probe} probe accuracy once"
  return float(found[0])


def test_the_shipped_files_are_a_small_hf_checkpoint_with_its_tokenizer():
  names = set(os.listdir(BASE_DIR))
  assert {"config.json", "model.safetensors", "tokenizer_config.json", "README.md"} <= names
  size = sum(os.path.getsize(os.path.join(BASE_DIR, name)) for name in names)
  assert size <= 20 * 2**20, f"models/tiny_base is {size / 2**20:.1f} MB; the issue allows 20"


def test_the_base_scores_on_the_probe_what_its_card_says():
  config, params = hf.load_hf(BASE_DIR, jnp.float32)
  tokenizer = tokenizer_lib.load_tokenizer(BASE_DIR)
  assert len(tokenizer) <= config.vocab_size
  accuracy = pretrain_data.probe_accuracy(config, params, pretrain_data.probe_batch(tokenizer))
  # Argmax ties can flip on another CPU's float rounding: one target of 4096 either way.
  assert accuracy == pytest.approx(_card_probe_accuracy(), abs=1.5 / 4096 + 5e-4)
  # The restating probe over held-out contexts of the demo's world (2048 targets).
  world = config_lib.load_config_file("demo").data.synthetic
  restating = pretrain_data.probe_accuracy(
      config, params, pretrain_data.facts_probe_batch(tokenizer, world))
  assert restating == pytest.approx(_card_probe_accuracy("restating"), abs=1.5 / 2048 + 5e-4)


def test_the_demo_config_starts_from_the_base_with_its_tokenizer(tmp_path):
  config = config_lib.load_config_file("demo")
  assert os.path.samefile(config.model.hf_dir, BASE_DIR)
  job = setup.prepare(config, str(tmp_path))
  assert os.path.samefile(job.tokenizer_dir, BASE_DIR)  # no synthetic BPE trained in the run
  assert not os.path.exists(tmp_path / "tokenizer")
  shipped, _ = hf.load_hf(BASE_DIR, jnp.float32)
  assert (job.model_config.hidden_size, job.model_config.vocab_size) == (
      shipped.hidden_size, shipped.vocab_size)
