"""Test session set-up: 8 fake CPU devices (before jax is imported) and offline hubs."""
import os
import tempfile

# Fake 8 CPU devices for mesh tests; a low backend optimisation level halves compile time.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the session's workers and the CLI subprocesses the
# tests start (they compile the same micro programs again and again): a train CLI run of the
# micro config takes 54 s instead of 72 s once its programs are cached. Keyed by the program,
# the flags and the jax version, so a cached entry is never a stale one.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"atommem_jax_test_xla_cache_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
