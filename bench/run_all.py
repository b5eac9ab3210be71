"""Runs every benchmark in bench/, one after another, and says which ran and how it ended.

  python bench/run_all.py            # quick: small shapes, minutes on a laptop CPU
  python bench/run_all.py --full     # each benchmark's defaults (the BENCHMARKS.md figures)
  python bench/run_all.py --check    # only starts each one (--help) and checks its quick flags
  python bench/run_all.py --only bench_store,bench_model

Every bench/*.py but this file is run, in name order, as `python bench/NAME.py ARGS` from the
checkout (ARGS: QUICK[name] unless --full; a benchmark missing from QUICK runs with its
defaults in both modes). Nothing is written to BENCHMARKS.md: the benchmarks print their
tables (each takes --out FILE to keep one). A failing benchmark does not stop the others;
the exit status is 1 when any failed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)

# Small versions of each benchmark (same code paths, the micro preset and small shapes, one repeat).
QUICK = {
    "bench_attention": ["--preset", "micro", "--lengths", "256,512", "--repeats", "1"],
    "bench_losses": ["--preset", "micro", "--lengths", "256", "--chunks", "0,64",
                     "--time_lengths", "256", "--repeats", "1"],
    "bench_embed": ["--layers", "1", "--episodes", "2", "--steps", "1"],
    "bench_model": ["--presets", "micro", "--batch", "2", "--prompt_len", "64",
                    "--new_tokens", "8", "--repeats", "1"],
    "bench_protocol": ["--settings", "test", "--contexts", "1"],
    "bench_rollout": ["--presets", "micro", "--batch", "2", "--prompt_len", "64",
                      "--new_tokens", "16", "--contexts", "1", "--group_size", "2",
                      "--repeats", "1"],
    "bench_store": ["--sizes", "1000", "--ops", "20", "--repeats", "2",
                    "--recall-queries", "50"],
    "bench_train": ["--presets", "micro", "--shapes", "2x64", "--repeats", "1"],
    "memory_writes": ["--weights", "models/tiny_base", "--contexts", "4"],
    "probe_recall": ["--steps", "20", "--every", "10"],
}


def benchmarks() -> list[str]:
  """Names of the benchmark scripts in bench/ (without .py), in name order."""
  own = os.path.splitext(os.path.basename(__file__))[0]
  return sorted(name[:-3] for name in os.listdir(BENCH_DIR)
                if name.endswith(".py") and not name.startswith("_") and name[:-3] != own)


def _command(name: str, args: list[str]) -> list[str]:
  return [sys.executable, os.path.join(BENCH_DIR, f"{name}.py"), *args]


def _env() -> dict[str, str]:
  return dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (REPO, BENCH_DIR, os.environ.get("PYTHONPATH", "")) if p))


def check(name: str) -> str | None:
  """Starts `name` with --help; the problem (None: it starts and knows its quick flags)."""
  result = subprocess.run(_command(name, ["--help"]), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=300)
  if result.returncode != 0:
    return f"--help exited with {result.returncode}: {result.stderr.strip()[-500:]}"
  unknown = [flag for flag in QUICK.get(name, []) if flag.startswith("--")
             and not re.search(re.escape(flag) + r"\b", result.stdout)]
  return f"its --help lists no {', '.join(unknown)}" if unknown else None


def run(name: str, full: bool) -> int:
  """Runs `name` (output straight to this terminal); its exit status."""
  args = [] if full else QUICK.get(name, [])
  return subprocess.run(_command(name, args), cwd=REPO, env=_env()).returncode


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--full", action="store_true", help="each benchmark's default settings")
  parser.add_argument("--check", action="store_true",
                      help="only start each benchmark with --help and check its quick flags")
  parser.add_argument("--only", help="comma-separated benchmark names (default: all)")
  args = parser.parse_args(argv)
  names = benchmarks()
  if args.only:
    wanted = args.only.split(",")
    missing = sorted(set(wanted) - set(names))
    if missing:
      parser.error(f"--only: no benchmark {missing} in {BENCH_DIR}; there are {names}")
    names = [name for name in names if name in wanted]
  outcomes = []
  for name in names:
    mode = "check" if args.check else "full" if args.full or name not in QUICK else "quick"
    shown = " ".join(["--help"] if args.check else [] if mode == "full" else QUICK[name])
    print(f"=== {name} ({mode}{'' if name in QUICK else ', no quick arguments'}): "
          f"python bench/{name}.py {shown}".rstrip(), flush=True)
    started = time.perf_counter()
    if args.check:
      problem = check(name)
    else:
      status = run(name, args.full)
      problem = f"exited with {status}" if status else None
    seconds = time.perf_counter() - started
    outcomes.append((name, problem, seconds))
    print(f"=== {name}: {'ok' if problem is None else 'FAILED: ' + problem} ({seconds:.0f}s)",
          flush=True)
  print("\nsummary:")
  for name, problem, seconds in outcomes:
    print(f"  {name:<20} {'ok' if problem is None else 'FAILED'} {seconds:7.0f}s")
  return 1 if any(problem for _, problem, _ in outcomes) else 0


if __name__ == "__main__":
  sys.exit(main())
