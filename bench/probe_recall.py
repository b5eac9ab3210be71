"""How fast does a tiny Qwen3 learn in-context associative recall? A diagnostic for issue 5.

  python bench/probe_recall.py [--key k0|k1|k2|k3|anchor] [--mix_k0 0.5] [--facts 16]
                               [--queries 4] [--batch 16] [--steps 1000] [--lr 5e-3]
                               [--b2 0.999] [--heads 4] [--width 128] [--layers 2]
                               [--qk_norm_init 1.0] [--pool 377]
                               [--warm_facts 3 --warm_steps 600 [--ramp]] [--backend jax|torch]

The synthetic task needs an in-context lookup at every Create, Update and answer ("The friend of
Bilu is Mina" ... "Who is the friend of Bilu?"). This probe trains the tiny default's shape
(by default 2 layers, d128, vocabulary 2048; AdamW and our `make_sft_step`) on that skill
alone. Each sequence lists `facts` facts, then asks `queries` of them again; the loss is on
the asked values only:

  k0: fact "e v ."         question "? e v ."          one-token key, no filler word (the
      plain induction step: copy the token that followed e)
  k1: fact "e is v ."      question "? e is v ."       one-token key (e unique per fact)
  k2: fact "e r v ."       question "? e r v ."        two-token key (4 relations x 5 entities)
  k3: fact "r e is v ."    question "? r e is v ."     two-token key and a shared "is"
  anchor: as k1, but one fact reads "e now v ." and the one question is "? now v .": the
      value follows a fixed marker word, a lookup that needs no in-context key match

`--mix_k0 F` writes a share F of the training rows as k0 whatever --key is (the held-out rows
stay --key's): k1 alone stalls near ln 4 with 4 facts, k1 mixed with k0 learns
(BENCHMARKS.md). Keys and values are drawn from a pool of 377 tokens, as the synthetic task's
names (`--pool` sets another size). Every
`--every` steps it prints the training loss and the accuracy of the argmax on a fixed held-out
batch of 256 sequences with `facts` facts. With `--warm_steps`, the first steps train on
sequences of `--warm_facts` facts (a short-context curriculum); with `--ramp` the count grows
linearly from `--warm_facts` to `--facts` over those steps instead. References: ln(377) = 5.93
is the loss of a uniform guess over the pool; ln(facts) that of a uniform guess among the
values in context.

`--hf_dir DIR` trains nothing: it scores a Hugging Face base (models/tiny_base, a
pretraining run's export) on the probe in its own tokenizer's words (`train.pretrain_data`:
" Zale is Beri . ... ? Zale is Beri .", 16 facts and 16 questions, 256 fixed rows), the
accuracy its model card states; with `--facts N`, on N facts each asked once instead. It also
prints the reading probe (`pretrain_data.qa_probe_batch`: 8 questions over the documents of
each of 256 held-out contexts of configs/tiny.py's world, each answered right after them)
and the restating probe (`pretrain_data.facts_probe_batch`: 8 profile sentences of those
contexts' documents restated after them up to the object, " ? Kozi was born in" -> " Rupe").

`--backend torch` trains transformers' Qwen3ForCausalLM of the same shape instead, with
torch's AdamW on the same schedule (same data, same loss): an independent reference for
whether a slow start is our model's or the task's (a reference, so no q/k-norm option).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from atommem_jax.model import config as model_config_lib
from atommem_jax.model import qwen3
from atommem_jax.train import pretrain_data
from atommem_jax.train import state as state_lib
from atommem_jax.train import steps as steps_lib
from atommem_jax.train.batch import TrainBatch

POOL, FIRST_NAME = 377, 100  # value / key tokens: FIRST_NAME ... FIRST_NAME + POOL - 1
BOS, IS, DOT, ASK, NOW, FIRST_RELATION = 5, 10, 11, 12, 13, 20
_WARMUP_STEPS = 20


def _sequence(rng: np.random.Generator, key: str, facts: int, queries: int, pool: int):
  """Token ids and loss mask of one sequence (see the module docstring)."""
  if key in ("k0", "k1", "anchor"):
    keys = [(int(e),) for e in FIRST_NAME + rng.choice(pool, facts, replace=False)]
  else:
    entities = FIRST_NAME + rng.choice(pool, 5, replace=False)
    every = [(r, int(e)) for r in range(FIRST_RELATION, FIRST_RELATION + 4) for e in entities]
    keys = [every[i] for i in rng.choice(len(every), facts, replace=False)]

  marked = keys[int(rng.integers(len(keys)))] if key == "anchor" else None

  def prefix(k):
    if key == "k0":
      return [k[0]]
    if key in ("k1", "anchor"):
      return [k[0], NOW if k == marked else IS]
    return [k[1], k[0]] if key == "k2" else [k[0], k[1], IS]

  tokens, mask, value = [BOS], [0], {}
  for k in keys:
    value[k] = FIRST_NAME + int(rng.integers(pool))
    tokens += prefix(k) + [value[k], DOT]
    mask += [0] * (len(prefix(k)) + 2)
  if marked is not None:
    return tokens + [ASK, NOW, value[marked], DOT], mask + [0, 0, 1, 0]
  for i in rng.choice(len(keys), queries, replace=False):
    k = keys[i]
    tokens += [ASK] + prefix(k) + [value[k], DOT]
    mask += [0] * (len(prefix(k)) + 1) + [1, 0]
  return tokens, mask


def make_batch(rng: np.random.Generator, key: str, facts: int, queries: int,
               batch: int, pool: int = POOL, plain: int = 0) -> TrainBatch:
  """`batch` sequences: `plain` of them in key k0, the others in `key`, right-padded."""
  keys = [key] * (batch - plain) + ["k0"] * plain
  return pretrain_data.rows_to_batch(
      [_sequence(rng, row_key, facts, queries, pool) for row_key in keys], pad_id=0)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--key", choices=("k0", "k1", "k2", "k3", "anchor"), default="k1")
  parser.add_argument("--facts", type=int, default=16)
  parser.add_argument("--queries", type=int, default=4)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--every", type=int, default=100)
  parser.add_argument("--lr", type=float, default=5e-3)
  parser.add_argument("--b2", type=float, default=0.999)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--width", type=int, default=128)
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--qk_norm_init", type=float, default=1.0,
                      help="initial q_norm/k_norm scale (Qwen3: 1); larger allows sharper "
                           "attention from the first step")
  parser.add_argument("--pool", type=int, default=POOL,
                      help="how many distinct name tokens keys and values are drawn from")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--warm_facts", type=int, default=3)
  parser.add_argument("--warm_steps", type=int, default=0)
  parser.add_argument("--ramp", action="store_true",
                      help="grow the fact count linearly from --warm_facts to --facts over "
                           "the --warm_steps steps instead of switching at their end")
  parser.add_argument("--mix_k0", type=float, default=0.0,
                      help="share of the training rows written without the filler word (key "
                           "k0) whatever --key is; the held-out rows stay --key's")
  parser.add_argument("--backend", choices=("jax", "torch"), default="jax")
  parser.add_argument("--hf_dir", default="",
                      help="score this Hugging Face base on the text probe instead of training")
  args = parser.parse_args()
  if args.hf_dir:
    lookup, reading, restating = score_hf_dir(args.hf_dir, args.facts)
    print(f"{args.hf_dir}: {args.facts}-fact lookup probe accuracy {lookup:.3f}, reading probe "
          f"accuracy {reading:.3f}, restating probe accuracy {restating:.3f}")
    return
  for facts in (args.facts, args.warm_facts):
    if not 1 <= min(args.queries, facts) or (args.key in ("k2", "k3") and facts > 20):
      parser.error("need --queries >= 1, --facts and --warm_facts >= 1, and at most 20 facts "
                   "for the two-token keys")
    if not max(facts, 5) <= args.pool <= POOL:
      parser.error(f"--pool must be at least --facts (and 5) and at most {POOL}")
  if args.width % args.heads:
    parser.error("--heads must divide --width")
  if args.backend == "torch" and args.qk_norm_init != 1.0:
    parser.error("--qk_norm_init is for --backend jax only")

  config = model_config_lib.preset("micro").replace(
      vocab_size=2048, hidden_size=args.width, intermediate_size=3 * args.width,
      num_hidden_layers=args.layers, num_attention_heads=args.heads,
      num_key_value_heads=max(1, args.heads // 2), head_dim=args.width // args.heads,
      remat="none")
  rng = np.random.default_rng(args.seed)
  held_out = make_batch(np.random.default_rng(10_000 + args.seed), args.key, args.facts,
                        args.queries, 256, args.pool)
  make_trainer = _torch_trainer if args.backend == "torch" else _jax_trainer
  train_step, accuracy = make_trainer(config, args, held_out)

  questions = 1 if args.key == "anchor" else min(args.queries, args.facts)
  warm_up = (f", first {args.warm_steps} steps on {args.warm_facts} facts"
             if args.warm_steps else "")
  if args.ramp and args.warm_steps:
    warm_up = f", facts growing from {args.warm_facts} to {args.facts} over {args.warm_steps} steps"
  print(f"{args.backend}: key {args.key}, {args.facts} facts, {questions} questions, batch "
        f"{args.batch}, lr {args.lr}, b2 {args.b2}, {args.layers} layers, d{args.width}, "
        f"{args.heads} heads, q/k norm init {args.qk_norm_init}, pool {args.pool}{warm_up}; "
        f"reference losses: uniform over the pool {math.log(args.pool):.2f}, uniform over the "
        f"facts' values {math.log(args.facts):.2f}")
  print("| step | train loss | held-out accuracy | seconds |\n|---|---|---|---|")
  started = time.perf_counter()
  for number in range(1, args.steps + 1):
    facts = args.warm_facts if number <= args.warm_steps else args.facts
    if args.ramp and number <= args.warm_steps:
      facts = args.warm_facts + (args.facts - args.warm_facts) * (number - 1) // args.warm_steps
    loss = train_step(make_batch(rng, args.key, facts, min(args.queries, facts), args.batch,
                                 args.pool, plain=int(round(args.mix_k0 * args.batch))))
    if number % args.every == 0 or number == args.steps:
      print(f"| {number} | {loss:.3f} | {accuracy():.3f} | "
            f"{time.perf_counter() - started:.0f} |", flush=True)


def score_hf_dir(hf_dir: str, facts: int = 16) -> tuple[float, float, float]:
  """(lookup, reading, restating) probe accuracies of the Hugging Face base in `hf_dir`, read
  once with its own tokenizer: the text probe (`pretrain_data.probe_batch`, `facts` facts each
  asked once), the reading probe (`pretrain_data.qa_probe_batch`: 8 questions over the
  documents of each of 256 held-out contexts of configs/tiny.py's world) and the restating
  probe (`pretrain_data.facts_probe_batch`: 8 profile sentences of each of those contexts'
  documents restated up to the object)."""
  from atommem_jax import config_lib  # pylint: disable=g-import-not-at-top
  from atommem_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from atommem_jax.model import hf  # pylint: disable=g-import-not-at-top
  config, params = hf.load_hf(hf_dir, jnp.float32)
  tokenizer = tokenizer_lib.load_tokenizer(hf_dir)
  world = config_lib.load_config_file("tiny").data.synthetic
  return tuple(pretrain_data.probe_accuracy(config, params, batch) for batch in (
      pretrain_data.probe_batch(tokenizer, facts=facts, queries=facts),
      pretrain_data.qa_probe_batch(tokenizer, dict(world, questions_per_context=8)),
      pretrain_data.facts_probe_batch(tokenizer, world)))


def _jax_trainer(config, args, held_out: TrainBatch):
  """(train_step(batch) -> loss, accuracy() on held_out) for our model and make_sft_step."""
  optimizer = state_lib.make_optimizer(state_lib.OptimizerConfig(
      lr=args.lr, warmup_steps=_WARMUP_STEPS, b2=args.b2))
  state = state_lib.create_train_state(config, jax.random.key(args.seed), optimizer)
  if args.qk_norm_init != 1.0:
    attn = dict(state.params["layers"]["attn"])
    for name in ("q_norm", "k_norm"):
      attn[name] = {"scale": attn[name]["scale"] * args.qk_norm_init}
    params = {**state.params, "layers": {**state.params["layers"], "attn": attn}}
    state = dataclasses.replace(state, params=params)
  step = steps_lib.make_sft_step(config, optimizer)
  trained = {"state": state}

  @jax.jit
  def held_out_accuracy(params):
    logits = qwen3.logits(config, params, held_out.tokens[:, :-1])
    hits = (jnp.argmax(logits, -1) == held_out.tokens[:, 1:]) * held_out.loss_mask[:, 1:]
    return hits.sum() / held_out.loss_mask.sum()

  def train_step(batch: TrainBatch) -> float:
    trained["state"], metrics = step(trained["state"], batch)
    return float(metrics["loss"])

  return train_step, lambda: float(held_out_accuracy(trained["state"].params))


def _torch_trainer(config, args, held_out: TrainBatch):
  """The same for transformers' Qwen3ForCausalLM: AdamW (decay 0.01), clip 1, same warm-up."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(args.seed)
  model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
      vocab_size=config.vocab_size, hidden_size=config.hidden_size,
      intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
      num_attention_heads=config.num_attention_heads,
      num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim,
      rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
      rms_norm_eps=config.rms_norm_eps,
      tie_word_embeddings=config.tie_word_embeddings, max_position_embeddings=4096))
  optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, args.b2),
                                eps=1e-8, weight_decay=0.01)
  schedule = torch.optim.lr_scheduler.LambdaLR(
      optimizer, lambda done: min(1.0, done / _WARMUP_STEPS))  # optax: 0 -> lr linearly

  def nll(batch: TrainBatch):
    tokens = torch.as_tensor(batch.tokens, dtype=torch.long)
    mask = torch.as_tensor(batch.loss_mask)[:, 1:]
    logits = model(tokens).logits[:, :-1].float()
    per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens[:, 1:],
                                                  reduction="none")
    return (per_token * mask).sum() / mask.sum(), logits, tokens, mask

  def train_step(batch: TrainBatch) -> float:
    loss, _, _, _ = nll(batch)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    return loss.item()

  def accuracy() -> float:
    with torch.no_grad():
      _, logits, tokens, mask = nll(held_out)
      return float(((logits.argmax(-1) == tokens[:, 1:]) * mask).sum() / mask.sum())

  return train_step, accuracy


if __name__ == "__main__":
  main()
