"""Train-step throughput: atommem-jax SFT and GRPO steps vs the same step in transformers/torch.

  python bench/bench_train.py [--presets micro,qwen3-0.1b] [--shapes 8x256,4x512] [--repeats 3]
                              [--out FILE]
  python bench/bench_train.py --mfu --peak_tflops 989 [--presets qwen3-0.6b,qwen3-1.7b]
                              [--shapes 8x2048,4x2048]

CPU mode (default): fp32, one device. Ours: `make_sft_step` / `make_grpo_step` (AdamW with
global-norm clipping) on a random `TrainBatch` [B, T] of one sequence per row, the second half
of each row trained. Reference: `transformers.Qwen3ForCausalLM` with the same weights, the
same loss (completion-only NLL for SFT; clipped ratio loss plus k3 KL to a frozen reference
model, and the entropy metric, for GRPO), `clip_grad_norm_` and `torch.optim.AdamW`. Times are
medians over `repeats` steps after one warm-up step; our compile time is reported apart.

--mfu mode (for GPUs/TPUs): our steps only, fp32 master weights and bf16 compute, on a mesh
over all local devices (batch over data). Model FLOPs per step: a forward is
2 * N * tokens + 2 * L * (heads * head_dim) * T^2 per row (causal attention, QK^T and AV),
N the matmul parameters (the LM head included, the embedding lookup not); SFT is 3 forwards
(forward + backward), GRPO 4 (plus the reference forward). MFU = FLOPs / time / (peak_tflops
* devices).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Callable

import jax
import numpy as np

from atommem_jax.model import config as model_config_lib
from atommem_jax.model import hf
from atommem_jax.model import qwen3
from atommem_jax.model import sharding
from atommem_jax.train import losses
from atommem_jax.train import state as state_lib
from atommem_jax.train import steps
from atommem_jax.train.batch import TrainBatch

STEP_KINDS = ("sft", "grpo")


def _median_seconds(fn: Callable[[], None], repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def random_batch(config: model_config_lib.Qwen3Config, batch: int, length: int,
                 seed: int = 0) -> TrainBatch:
  """[B, T]: one sequence per row, the second half trained, advantages +-1 per row."""
  rng = np.random.default_rng(seed)
  loss_mask = np.zeros((batch, length), np.float32)
  loss_mask[:, length // 2:] = 1.0
  advantages = np.where(np.arange(batch) % 2, 1.0, -1.0).astype(np.float32)[:, None]
  return TrainBatch(
      tokens=rng.integers(3, config.vocab_size, (batch, length)).astype(np.int32),
      positions=np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)).copy(),
      segment_ids=np.ones((batch, length), np.int32),
      loss_mask=loss_mask,
      # log(1 / V): about what a random-init policy gives its sampled tokens.
      old_logprobs=loss_mask * -np.log(config.vocab_size).astype(np.float32),
      advantages=loss_mask * advantages)


def matmul_params(config: model_config_lib.Qwen3Config) -> int:
  """Parameters that take part in a matmul per token: all but the input embedding lookup."""
  embedding_lookup = 0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size
  return config.num_params() - embedding_lookup


def forward_flops(config: model_config_lib.Qwen3Config, batch: int, length: int) -> float:
  """Model FLOPs of one forward over [B, T] rows (causal attention)."""
  attention_width = config.num_attention_heads * config.head_dim
  per_row = (2 * matmul_params(config) * length
             + 2 * config.num_hidden_layers * attention_width * length ** 2)
  return float(batch * per_row)


class _Ours:
  """Our jitted SFT / GRPO steps on `mesh`, with the step's compile time measured apart."""

  def __init__(self, config: model_config_lib.Qwen3Config, params, mesh):
    self.config, self.mesh = config, mesh
    self.params = params
    self.optimizer = state_lib.make_optimizer(state_lib.OptimizerConfig())

  def time_step(self, kind: str, batch: TrainBatch, repeats: int) -> tuple[float, float]:
    """(median seconds per step, seconds of the first call: compile + one step)."""
    state = state_lib.create_train_state(self.config, self.params, self.optimizer, self.mesh)
    if kind == "sft":
      step = steps.make_sft_step(self.config, self.optimizer, self.mesh)
      run = lambda state: step(state, batch)
    else:
      ref_params = jax.device_put(
          self.params, qwen3.param_shardings(self.config, self.mesh, sharding.DEFAULT_RULES))
      step = steps.make_grpo_step(self.config, self.optimizer, losses.GRPOConfig(), self.mesh)
      run = lambda state: step(state, ref_params, batch)
    holder = {"state": state}

    def one_step():
      holder["state"], metrics = run(holder["state"])
      jax.block_until_ready(metrics)

    start = time.perf_counter()
    one_step()
    first = time.perf_counter() - start
    return _median_seconds(one_step, repeats), first


class _Torch:
  """The same steps in transformers/torch, fp32, on the same weights."""

  def __init__(self, hf_model):
    import torch  # pylint: disable=g-import-not-at-top
    self.torch = torch
    self.hf_model = hf_model

  def _copies(self):
    import copy  # pylint: disable=g-import-not-at-top
    policy = copy.deepcopy(self.hf_model).train()
    optimizer = self.torch.optim.AdamW(policy.parameters(), lr=1e-6, betas=(0.9, 0.999),
                                       eps=1e-8, weight_decay=0.01)
    return policy, optimizer

  def time_step(self, kind: str, batch: TrainBatch, repeats: int) -> float:
    torch = self.torch
    tokens = torch.from_numpy(np.asarray(batch.tokens)).long()
    mask = torch.from_numpy(np.asarray(batch.loss_mask))[:, 1:]
    old_logprobs = torch.from_numpy(np.asarray(batch.old_logprobs))[:, 1:]
    advantages = torch.from_numpy(np.asarray(batch.advantages))[:, 1:]
    targets = tokens[:, 1:]
    policy, optimizer = self._copies()
    reference = self.hf_model.eval() if kind == "grpo" else None

    def token_logprobs(logits):
      return torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, targets[..., None])[..., 0]

    def one_step() -> dict[str, float]:
      logits = policy(input_ids=tokens).logits
      logprobs = token_logprobs(logits)
      metrics = {}
      if kind == "sft":
        per_token = -logprobs
      else:
        with torch.no_grad():
          ref_logprobs = token_logprobs(reference(input_ids=tokens).logits)
          all_logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
          entropy = -(all_logprobs.exp() * all_logprobs).sum(-1)
          metrics["entropy"] = ((entropy * mask).sum() / mask.sum()).item()
        ratio = torch.exp(torch.clamp(logprobs - old_logprobs, -20.0, 20.0))
        pg = torch.maximum(-advantages * ratio, -advantages * torch.clamp(ratio, 0.8, 1.28))
        pg = torch.where(advantages < 0, torch.minimum(pg, -advantages * 3.0), pg)
        log_ratio = torch.clamp(ref_logprobs - logprobs, -20.0, 20.0)
        kl = torch.clamp(torch.exp(log_ratio) - log_ratio - 1.0, -10.0, 10.0)
        per_token = pg + 0.001 * kl
      loss = (per_token * mask).sum() / mask.sum()
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
      optimizer.step()
      metrics["loss"] = loss.item()
      return metrics

    one_step()
    return _median_seconds(one_step, repeats)


def _hf_model_and_params(config: model_config_lib.Qwen3Config, seed: int):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  hf_config = transformers.Qwen3Config(**{
      k: v for k, v in config.to_hf_dict().items()
      if k not in ("architectures", "model_type", "torch_dtype", "dtype")})
  model = transformers.Qwen3ForCausalLM(hf_config).to(torch.float32)
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  return model, hf.hf_state_dict_to_params(config, state)


def _parse_shapes(text: str, count: int) -> list[tuple[int, int]]:
  shapes = [tuple(int(n) for n in item.split("x")) for item in text.split(",")]
  if len(shapes) == 1:
    shapes *= count
  if len(shapes) != count or any(len(s) != 2 or min(s) < 2 for s in shapes):
    raise SystemExit(f"--shapes {text!r}: give one BxT (e.g. 4x512) or one per preset")
  return shapes


def bench_cpu(name: str, batch: int, length: int, repeats: int) -> list[dict]:
  config = model_config_lib.preset(name, param_dtype="float32", dtype="float32", remat="none")
  hf_model, params = _hf_model_and_params(config, seed=0)
  ours = _Ours(config, params, state_lib.single_device_mesh())
  theirs = _Torch(hf_model)
  train_batch = random_batch(config, batch, length)
  rows = []
  for kind in STEP_KINDS:
    print(f"  {name} {kind} ...", file=sys.stderr, flush=True)
    ours_s, first_s = ours.time_step(kind, train_batch, repeats)
    theirs_s = theirs.time_step(kind, train_batch, repeats)
    rows.append(dict(preset=name, kind=kind, params_m=config.num_params() / 1e6, batch=batch,
                     length=length, ours_s=ours_s, theirs_s=theirs_s,
                     compile_s=max(first_s - ours_s, 0.0)))
  return rows


def bench_mfu(name: str, batch: int, length: int, repeats: int, peak_tflops: float,
              remat: str) -> list[dict]:
  config = model_config_lib.preset(name, param_dtype="float32", dtype="bfloat16", remat=remat)
  params = qwen3.init_params(config, jax.random.key(0))
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, devices=jax.local_devices())
  ours = _Ours(config, params, mesh)
  train_batch = random_batch(config, batch, length)
  rows = []
  for kind, forwards in (("sft", 3), ("grpo", 4)):
    print(f"  {name} {kind} ...", file=sys.stderr, flush=True)
    ours_s, first_s = ours.time_step(kind, train_batch, repeats)
    flops = forwards * forward_flops(config, batch, length)
    rows.append(dict(preset=name, kind=kind, params_m=config.num_params() / 1e6, batch=batch,
                     length=length, ours_s=ours_s, compile_s=max(first_s - ours_s, 0.0),
                     tflops=flops / ours_s / 1e12,
                     mfu=flops / ours_s / (peak_tflops * 1e12 * mesh.size)))
  return rows


def _machine() -> str:
  device = jax.devices()[0]
  return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{jax.device_count()} x {device.device_kind} ({device.platform}); jax {jax.__version__}")


def cpu_markdown(rows: list[dict], command: str) -> str:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  lines = [
      f"Command: `{command}`", "",
      f"Machine: {_machine()}, torch {torch.__version__}, transformers "
      f"{transformers.__version__}; fp32, median of repeats after one warm-up step.", "",
      "| preset | params | step | batch x length | ours tokens/s | HF tokens/s | ours/HF "
      "| our compile (s) |",
      "| --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for r in rows:
    tokens = r["batch"] * r["length"]
    lines.append(f"| {r['preset']} | {r['params_m']:.1f}M | {r['kind']} | {r['batch']} x "
                 f"{r['length']} | {tokens / r['ours_s']:,.0f} | {tokens / r['theirs_s']:,.0f} "
                 f"| {r['theirs_s'] / r['ours_s']:.2f} | {r['compile_s']:.1f} |")
  lines += ["", "ours/HF above 1 means atommem-jax is faster. Both sides: forward, backward, "
            "global-norm clip and AdamW; GRPO adds the frozen reference forward."]
  return "\n".join(lines)


def mfu_markdown(rows: list[dict], command: str, peak_tflops: float) -> str:
  lines = [
      f"Command: `{command}`", "",
      f"Machine: {_machine()}; fp32 master weights, bf16 compute; peak {peak_tflops:g} "
      "TFLOP/s per device; median of repeats after one warm-up step.", "",
      "| preset | params | step | batch x length | tokens/s | model TFLOP/s | MFU "
      "| compile (s) |",
      "| --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for r in rows:
    tokens = r["batch"] * r["length"]
    lines.append(f"| {r['preset']} | {r['params_m']:.1f}M | {r['kind']} | {r['batch']} x "
                 f"{r['length']} | {tokens / r['ours_s']:,.0f} | {r['tflops']:.2f} "
                 f"| {r['mfu']:.1%} | {r['compile_s']:.1f} |")
  lines += ["", "Model FLOPs: 3 forwards (SFT) or 4 (GRPO, with the reference forward) of "
            "2 N tokens + 2 L (heads x head_dim) T^2 per row; rematerialisation not counted."]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--presets", help="comma-separated Qwen3 presets (default: micro,qwen3-0.1b;"
                      " with --mfu qwen3-0.6b,qwen3-1.7b)")
  parser.add_argument("--shapes", help="BxT per preset, or one for all (default: 8x256,4x512;"
                      " with --mfu 8x2048,4x2048)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--mfu", action="store_true", help="bf16 model FLOPs utilisation mode")
  parser.add_argument("--peak_tflops", type=float,
                      help="--mfu: peak dense bf16 TFLOP/s of one device (H100 SXM 989, "
                      "A800/A100 312, TPU v5p 459)")
  parser.add_argument("--remat", default="none", choices=model_config_lib.REMAT_POLICIES,
                      help="--mfu: per-layer rematerialisation")
  parser.add_argument("--torch_threads", type=int, default=os.cpu_count() or 1,
                      help="torch intra-op threads (fewer than the cores on a shared machine)")
  parser.add_argument("--out", help="also write the markdown table to this file")
  args = parser.parse_args(argv)
  if args.mfu and not args.peak_tflops:
    parser.error("--mfu needs --peak_tflops, the device's peak bf16 TFLOP/s")
  presets = (args.presets or ("qwen3-0.6b,qwen3-1.7b" if args.mfu else "micro,qwen3-0.1b")
             ).split(",")
  unknown = [name for name in presets if name not in model_config_lib.PRESETS]
  if unknown:
    parser.error(f"--presets: unknown {unknown}; known: {sorted(model_config_lib.PRESETS)}")
  shapes = _parse_shapes(args.shapes or ("8x2048,4x2048" if args.mfu else "8x256,4x512"),
                         len(presets))
  command = "python bench/bench_train.py " + " ".join(sys.argv[1:] if argv is None else argv)
  rows = []
  if not args.mfu:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(args.torch_threads)
  for name, (batch, length) in zip(presets, shapes):
    print(f"benchmarking {name} ({batch} x {length}) ...", file=sys.stderr, flush=True)
    if args.mfu:
      rows += bench_mfu(name, batch, length, args.repeats, args.peak_tflops, args.remat)
    else:
      rows += bench_cpu(name, batch, length, args.repeats)
  table = (mfu_markdown(rows, command, args.peak_tflops) if args.mfu
           else cpu_markdown(rows, command))
  print(table)
  if args.out:
    with open(args.out, "w") as f:
      f.write(table + "\n")


if __name__ == "__main__":
  main()
