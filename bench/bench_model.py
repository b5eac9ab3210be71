"""Qwen3 prefill and greedy decode: atommem-jax vs transformers, same config, weights and inputs.

  python bench/bench_model.py [--presets tiny,qwen3-0.1b] [--batch 4] [--prompt_len 512]
                              [--new_tokens 32] [--repeats 3] [--out BENCHMARKS.md-section file]

Both sides run fp32 on the same machine. Weights come from a random `transformers.Qwen3ForCausalLM`
converted with `hf_state_dict_to_params`. Prefill: one forward over [B, P] left-padded prompts.
Decode: greedy generation of `new_tokens` tokens (ours: `rollout.sampler.generate`; theirs:
`model.generate(do_sample=False)` with its KV cache), EOS disabled so both produce exactly that many.
Times are medians over `repeats` after one warm-up run (our compile time is reported apart),
in wall seconds and in process CPU seconds (user + sys, all threads): on a shared, loaded
machine CPU time is the steadier of the two, though torch's spinning threads inflate theirs.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from atommem_jax.model import config as config_lib
from atommem_jax.model import hf
from atommem_jax.model import qwen3
from atommem_jax.rollout import sampler


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _median_seconds(fn, repeats: int) -> tuple[float, float]:
  """Medians of (wall seconds, process CPU seconds) over `repeats` calls of fn."""
  walls, cpus = [], []
  for _ in range(repeats):
    start, start_cpu = time.perf_counter(), _cpu_seconds()
    fn()
    walls.append(time.perf_counter() - start)
    cpus.append(_cpu_seconds() - start_cpu)
  return statistics.median(walls), statistics.median(cpus)


def _hf_model(config: config_lib.Qwen3Config, seed: int):
  torch.manual_seed(seed)
  hf_config = transformers.Qwen3Config(**{
      k: v for k, v in config.to_hf_dict().items()
      if k not in ("architectures", "model_type", "torch_dtype", "dtype")})
  model = transformers.Qwen3ForCausalLM(hf_config).eval().to(torch.float32)
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  return model, hf.hf_state_dict_to_params(config, state)


def bench_preset(name: str, batch: int, prompt_len: int, new_tokens: int, repeats: int) -> dict:
  config = config_lib.preset(name)
  model, params = _hf_model(config, seed=0)
  params = jax.device_put(params)
  rng = np.random.default_rng(0)
  lengths = [prompt_len - 37 * i for i in range(batch)]  # ragged, left-padded
  prompts = [rng.integers(3, config.vocab_size, size=n).tolist() for n in lengths]
  tokens, mask = sampler.left_pad(prompts, prompt_len, pad_id=0)
  tokens_j, mask_j = jnp.asarray(tokens), jnp.asarray(mask)
  tokens_t, mask_t = torch.from_numpy(tokens).long(), torch.from_numpy(mask).long()

  forward = jax.jit(lambda p, t, m: qwen3.logits(config, p, t, m))
  start = time.perf_counter()
  jax.block_until_ready(forward(params, tokens_j, mask_j))
  ours_prefill_compile = time.perf_counter() - start
  ours_prefill, ours_prefill_cpu = _median_seconds(
      lambda: jax.block_until_ready(forward(params, tokens_j, mask_j)), repeats)
  with torch.inference_mode():
    model(input_ids=tokens_t, attention_mask=mask_t)
    theirs_prefill, theirs_prefill_cpu = _median_seconds(
        lambda: model(input_ids=tokens_t, attention_mask=mask_t), repeats)

  sampling = sampler.SamplingConfig(max_new_tokens=new_tokens, greedy=True, eos_ids=(), pad_id=0)
  key = jax.random.key(0)
  start = time.perf_counter()
  ours_out = jax.block_until_ready(sampler.generate(config, params, tokens_j, mask_j, key, sampling))
  ours_decode_compile = time.perf_counter() - start
  ours_decode, ours_decode_cpu = _median_seconds(
      lambda: jax.block_until_ready(sampler.generate(config, params, tokens_j, mask_j, key, sampling)),
      repeats)
  generate_kwargs = dict(input_ids=tokens_t, attention_mask=mask_t, do_sample=False,
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0,
                         eos_token_id=None)
  with torch.inference_mode():
    theirs_out = model.generate(**generate_kwargs)
    theirs_decode, theirs_decode_cpu = _median_seconds(lambda: model.generate(**generate_kwargs),
                                                       repeats)
  same_tokens = float(np.mean(np.asarray(ours_out.tokens) == theirs_out[:, prompt_len:].numpy()))

  return dict(preset=name, params_m=config.num_params() / 1e6, batch=batch, prompt_len=prompt_len,
              new_tokens=new_tokens,
              ours_prefill_s=ours_prefill, theirs_prefill_s=theirs_prefill,
              ours_decode_s=ours_decode, theirs_decode_s=theirs_decode,
              ours_prefill_cpu_s=ours_prefill_cpu, theirs_prefill_cpu_s=theirs_prefill_cpu,
              ours_decode_cpu_s=ours_decode_cpu, theirs_decode_cpu_s=theirs_decode_cpu,
              ours_prefill_compile_s=ours_prefill_compile, ours_decode_compile_s=ours_decode_compile,
              same_tokens=same_tokens)


def load_line(load_before: tuple[float, ...]) -> str:
  """The 1-minute load average before and after a run (what else the machine was doing)."""
  return f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after"


def to_markdown(rows: list[dict], command: str, load_before: tuple[float, ...]) -> str:
  lines = [
      f"Command: `{command}`",
      "",
      f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
      f"{load_line(load_before)}; jax {jax.__version__} ({jax.devices()[0].platform}), "
      f"torch {torch.__version__}, transformers {transformers.__version__}; fp32, median of "
      "repeats after warm-up.",
      "",
      "| preset | params | batch x prompt | prefill ours (s) | prefill HF (s) | prefill HF/ours "
      "| decode tokens | decode ours (s) | decode HF (s) | decode HF/ours | greedy tokens equal "
      "| our compile prefill / decode (s) | CPU s prefill ours / HF | CPU s decode ours / HF |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for r in rows:
    lines.append(
        f"| {r['preset']} | {r['params_m']:.1f}M | {r['batch']} x {r['prompt_len']} "
        f"| {r['ours_prefill_s']:.3f} | {r['theirs_prefill_s']:.3f} "
        f"| {r['theirs_prefill_s'] / r['ours_prefill_s']:.2f} | {r['new_tokens']} "
        f"| {r['ours_decode_s']:.3f} | {r['theirs_decode_s']:.3f} "
        f"| {r['theirs_decode_s'] / r['ours_decode_s']:.2f} | {r['same_tokens']:.0%} "
        f"| {r['ours_prefill_compile_s']:.1f} / {r['ours_decode_compile_s']:.1f} "
        f"| {r['ours_prefill_cpu_s']:.3f} / {r['theirs_prefill_cpu_s']:.3f} "
        f"| {r['ours_decode_cpu_s']:.3f} / {r['theirs_decode_cpu_s']:.3f} |")
  lines.append("")
  lines.append("Ratios are HF time / our time: above 1 means atommem-jax is faster.")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--presets", default="tiny,qwen3-0.1b")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--prompt_len", type=int, default=512)
  parser.add_argument("--new_tokens", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", help="also write the markdown table to this file")
  args = parser.parse_args(argv)
  torch.set_num_threads(os.cpu_count() or 1)
  load_before = os.getloadavg()
  rows = []
  for name in args.presets.split(","):
    print(f"benchmarking {name} ...", file=sys.stderr, flush=True)
    rows.append(bench_preset(name, args.batch, args.prompt_len, args.new_tokens, args.repeats))
  table = to_markdown(rows, "python bench/bench_model.py " + " ".join(argv or sys.argv[1:]),
                      load_before)
  print(table)
  if args.out:
    with open(args.out, "w") as f:
      f.write(table + "\n")


if __name__ == "__main__":
  main()
