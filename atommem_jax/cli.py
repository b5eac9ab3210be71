r"""What every `python -m atommem_jax.*` entry point does before and around its own work.

`run(main, prog)` replaces `app.run(main)`: flags are parsed by `config_lib.parse_flags` (a
misspelt --config.FIELD is a flags error), a --config file must exist, compile and define
get_config(), positional arguments are refused, absl logs at WARNING unless --verbosity is
given (Orbax logs every save at INFO), and an exception of a type in USER_ERRORS (bad input a
user can make) ends the command with one line, `<prog>: error: <message>`, exit status 1.
Any other exception is a bug and keeps its traceback. `load_config` is the validated config.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable, NoReturn, Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections

from atommem_jax import config_lib

# (module, class) of the exceptions that mean bad input from the user; each message says what
# was wrong and where. Named rather than imported: the train modules take seconds to import,
# and a bad flag is reported before they are.
USER_ERRORS = (
    ("absl.app", "UsageError"),                            # a flag the entry point refuses
    ("atommem_jax.config_lib", "ConfigError"),             # a config field
    ("atommem_jax.data.multihop", "DataError"),            # a data file: file, line, field
    ("atommem_jax.train.checkpoint", "CheckpointError"),   # a checkpoint step or directory
    ("atommem_jax.train.stages", "NonFiniteUpdateError"),  # a NaN/inf update: step and stage
)


def user_error_types() -> tuple[type[BaseException], ...]:
  """The USER_ERRORS classes of the modules imported so far (an exception of a class whose
  module was never imported cannot have been raised)."""
  return tuple(getattr(sys.modules[module], name) for module, name in USER_ERRORS
               if module in sys.modules)


def fail(prog: str, error: BaseException | str) -> NoReturn:
  """Ends the command with `<prog>: error: <error>` on one line (exit status 1)."""
  sys.exit(f"{prog}: error: {' '.join(str(error).split())}")


def config_argument(argv: Sequence[str]) -> str | None:
  """The value of the last --config flag in `argv` (absl keeps the last), or None."""
  value = None
  for i, arg in enumerate(argv[1:], start=1):
    if arg == "--":
      break
    if arg in ("--config", "-config") and i + 1 < len(argv):
      value = argv[i + 1]
    elif arg.startswith(("--config=", "-config=")):
      value = arg.split("=", 1)[1]
  return value


def check_config_file(spec: str) -> None:
  """Raises ConfigError when the --config file `spec` ("PATH" or "PATH:ARG") is missing, does
  not compile, has no get_config() or its get_config() raises ConfigError (ml_collections
  would report the first lazily, the others with a traceback). Runs get_config() once more
  than the flag parse does: config files build a ConfigDict and nothing else."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise config_lib.ConfigError(f"--config {spec}: no such file; give a config file such as "
                                 "configs/tiny.py")
  try:  # an absolute path: load_config_file reads a bare word as a name in configs/
    config_lib.load_config_file(os.path.abspath(path) + (f":{arg}" if arg else ""))
  except SyntaxError as e:
    raise config_lib.ConfigError(f"--config {spec}: {e.filename}, line {e.lineno}: "
                                 f"{e.msg}") from e
  except config_lib.ConfigError as e:
    raise config_lib.ConfigError(f"--config {spec}: {e}") from e


def parse_flags(argv: list[str], *, prog: str) -> list[str]:
  """`config_lib.parse_flags`, after checking the --config file (`check_config_file`)."""
  spec = config_argument(argv)
  if spec is not None:
    try:
      check_config_file(spec)
    except config_lib.ConfigError as e:
      fail(prog, e)
  return config_lib.parse_flags(argv)


def load_config(prog: str, *, required: bool = True, example: str = "configs/tiny.py",
                cpu_devices: bool = True) -> ml_collections.ConfigDict | None:
  """The config of --config, validated; None when the flag is absent and not `required`.

  Ends the command in one line when the file did not load or a field is invalid. With
  `cpu_devices`, asks XLA for the config's mesh.cpu_devices (before JAX lists its devices).
  """
  holder = flags.FLAGS["config"]
  config = holder.value
  if config is None:
    if required:
      fail(prog, f"--config is required, e.g. --config {example}")
    return None
  name = holder.config_filename
  try:
    config.keys()  # ml_collections defers a config file's load error to the first access
  except OSError as e:
    fail(prog, f"--config {name}: " + (
        "no such file" if not os.path.isfile(name.partition(":")[0]) else str(e.__cause__ or e)))
  try:
    config_lib.validate(config)
  except config_lib.ConfigError as e:
    fail(prog, f"{name}: {e}")
  if cpu_devices:
    config_lib.request_cpu_devices(config)
  return config


def run(main: Callable[[Sequence[str]], None], prog: str) -> None:
  """`app.run(main)` for the entry point `prog` (e.g. "atommem_jax.evaluate"), as the module
  docstring says."""

  def guarded_main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
      fail(prog, f"unexpected arguments {argv[1:]}: every input is a --flag")
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    try:
      main(argv)
    except user_error_types() as e:  # evaluated when an exception arrives
      fail(prog, e)

  app.run(guarded_main, flags_parser=functools.partial(parse_flags, prog=prog))
