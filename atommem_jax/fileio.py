"""Files of a run on a local disk or on object storage (gs://, s3://, any fsspec URL).

A TPU pod or a cloud GPU job keeps its workdir on a bucket (`--workdir gs://bucket/run`): the
config and run records, the metrics (JSON lines and TensorBoard), the evaluations, the
synthetic tokenizer and the HF export all go through this module, and so do the inputs that
may live there too (long-context data files, SFT JSON lines, model.hf_dir, tokenizers); orbax writes the
checkpoints itself (gs:// and s3://). Local paths use the standard library; a URL with a
protocol goes through fsspec, which needs that protocol's package (gcsfs for gs://, s3fs for
s3://: `pip install atommem-jax[gcs]` / `[s3]`); `memory://` works everywhere (tests).

Object stores have no append and no rename: `RewrittenFile` keeps a file's bytes in memory
and uploads the whole object on flush, and a directory (tokenizer, HF export) is written to a
local temporary directory first and uploaded when it is complete.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import tempfile
import time
from typing import IO, Callable, Iterator

_LOCAL_PROTOCOLS = ("file", "local")


def protocol(path: str) -> str | None:
  """The URL protocol of `path` ("gs", "s3", "memory", ...), None for a local path."""
  path = os.fspath(path)
  if "://" not in path:
    return None
  name = path.split("://", 1)[0]
  return None if name in _LOCAL_PROTOCOLS else name


def is_remote(path: str) -> bool:
  return protocol(path) is not None


def _local(path: str) -> str:
  path = os.fspath(path)
  return path.split("://", 1)[1] if "://" in path else path


def canonical(path: str) -> str:
  """`path` as the code passes it on: a file:// URL becomes its local path; others unchanged."""
  return path if is_remote(path) else _local(path)


def _filesystem(path: str):
  """(fsspec filesystem, path inside it); a clear error when the protocol's package is missing."""
  import fsspec  # pylint: disable=g-import-not-at-top
  try:
    return fsspec.core.url_to_fs(path)
  except (ImportError, ValueError) as e:
    extra = {"gs": " (pip install gcsfs, or atommem-jax[gcs])",
             "s3": " (pip install s3fs, or atommem-jax[s3])"}.get(protocol(path), "")
    raise ValueError(f"{path}: cannot open this URL's file system{extra}: {e}") from e


def join(path: str, *parts: str) -> str:
  return posixpath.join(path, *parts) if is_remote(path) else os.path.join(_local(path), *parts)


def abspath(path: str) -> str:
  """An absolute local path; URLs unchanged."""
  return path if is_remote(path) else os.path.abspath(_local(path))


def dirname(path: str) -> str:
  """The directory holding `path` (a local path or a URL, without a trailing slash)."""
  if is_remote(path):
    scheme, inner = path.split("://", 1)
    return f"{scheme}://{posixpath.dirname(inner)}"
  return os.path.dirname(_local(path))


def _test(path: str, name: str) -> bool:
  """os.path.`name`(path) locally, the fsspec file system's `name`(path) for a URL."""
  if not is_remote(path):
    return getattr(os.path, name)(_local(path))
  fs, inner = _filesystem(path)
  return getattr(fs, name)(inner)


def exists(path: str) -> bool:
  return _test(path, "exists")


def isfile(path: str) -> bool:
  return _test(path, "isfile")


def isdir(path: str) -> bool:
  return _test(path, "isdir")


def makedirs(path: str) -> None:
  """Creates a local directory (and parents); on object storage directories need no creating."""
  if not is_remote(path):
    os.makedirs(_local(path), exist_ok=True)
    return
  fs, inner = _filesystem(path)
  fs.makedirs(inner, exist_ok=True)


def read_bytes(path: str) -> bytes:
  if not is_remote(path):
    with open(_local(path), "rb") as f:
      return f.read()
  fs, inner = _filesystem(path)
  return fs.cat_file(inner)  # FileNotFoundError when missing, as open()


def read_text(path: str) -> str:
  return read_bytes(path).decode("utf-8")


@contextlib.contextmanager
def atomic_open(path: str) -> Iterator[IO[bytes]]:
  """Opens a temporary local file for binary writing and renames it to `path` only on success,
  so a reader (or a resumed run) never sees half a file under its final name."""
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_bytes(path: str, data: bytes) -> None:
  """Writes a whole file: locally through `atomic_open`; on object storage one upload, which
  is all-or-nothing by itself."""
  if is_remote(path):
    fs, inner = _filesystem(path)
    fs.pipe_file(inner, data)
    return
  with atomic_open(_local(path)) as f:
    f.write(data)


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def download_dir(path: str, local_dir: str) -> str:
  """Copies the files of directory `path` into `local_dir`; returns `local_dir`."""
  fs, inner = _filesystem(path)
  os.makedirs(local_dir, exist_ok=True)
  names = [name for name in fs.ls(inner, detail=False) if fs.isfile(name)]
  if not names:
    raise FileNotFoundError(f"{path}: no such directory, or no files in it")
  for name in names:
    with open(os.path.join(local_dir, posixpath.basename(name)), "wb") as f:
      f.write(fs.cat_file(name))
  return local_dir


def upload_dir(local_dir: str, path: str, *, stale: Callable[[str], bool] | None = None
               ) -> None:
  """Copies the files of local directory `local_dir` to directory `path` (not recursive), then
  removes the files of `path` that were not uploaded and whose names `stale` accepts."""
  fs, inner = _filesystem(path)
  fs.makedirs(inner, exist_ok=True)
  uploaded = set()
  for name in sorted(os.listdir(local_dir)):
    source = os.path.join(local_dir, name)
    if os.path.isfile(source):
      fs.put_file(source, posixpath.join(inner, name))
      uploaded.add(name)
  if stale is not None:
    for entry in fs.ls(inner, detail=False):
      name = posixpath.basename(entry.rstrip("/"))
      if name not in uploaded and stale(name) and fs.isfile(entry):
        fs.rm_file(entry)


@contextlib.contextmanager
def local_file_to_read(path: str) -> Iterator[str]:
  """A local path with the bytes of file `path` (itself when local, a temporary copy else)."""
  if not is_remote(path):
    yield _local(path)
    return
  with tempfile.TemporaryDirectory(prefix="atommem_read_") as tmp:
    local = os.path.join(tmp, posixpath.basename(path))
    with open(local, "wb") as f:
      f.write(read_bytes(path))
    yield local


@contextlib.contextmanager
def local_file_to_write(path: str) -> Iterator[str]:
  """A local path whose file ends up at `path`: `path` itself when local; else a temporary
  file uploaded when the block ends without an error (nothing is uploaded on error)."""
  if not is_remote(path):
    yield _local(path)
    return
  with tempfile.TemporaryDirectory(prefix="atommem_write_") as tmp:
    local = os.path.join(tmp, posixpath.basename(path))
    yield local
    with open(local, "rb") as f:
      write_bytes(path, f.read())


@contextlib.contextmanager
def local_dir_to_read(path: str) -> Iterator[str]:
  """A local directory with the files of `path` (itself when local, a temporary copy else)."""
  if not is_remote(path):
    yield _local(path)
    return
  with tempfile.TemporaryDirectory(prefix="atommem_read_") as tmp:
    yield download_dir(path, tmp)


@contextlib.contextmanager
def local_dir_to_write(path: str, *, stale: Callable[[str], bool] | None = None
                       ) -> Iterator[str]:
  """A local directory whose files end up in `path`: `path` itself when local; else a
  temporary directory uploaded (`upload_dir`, with `stale`) when the block ends without an
  error (nothing is uploaded on error)."""
  if not is_remote(path):
    yield _local(path)
    return
  with tempfile.TemporaryDirectory(prefix="atommem_write_") as tmp:
    yield tmp
    upload_dir(tmp, path, stale=stale)


class RewrittenFile:
  """An append-only file on object storage: the bytes are kept in memory and the whole object
  is uploaded by `flush` (at most every `min_interval_s` unless forced) and by `close`.

  With `append`, an existing object's bytes come first (a resumed run adds to its metrics).
  Also the file object of tensorboardX's event writer for URLs (`write`, `flush`, `close`).
  """

  def __init__(self, path: str, *, append: bool = True, min_interval_s: float = 0.0):
    self._path = path
    self._buffer = io.BytesIO()
    if append:
      try:
        self._buffer.write(read_bytes(path))
      except FileNotFoundError:
        pass  # a new file
    self._min_interval_s = min_interval_s
    self._uploaded_at = -float("inf")
    self._dirty = True
    self.closed = False

  def write(self, data: bytes | str) -> int:
    if self.closed:
      raise ValueError(f"{self._path}: write to a closed file")
    data = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    self._dirty = True
    return self._buffer.write(data)

  def flush(self, force: bool = True) -> None:
    if self.closed or not self._dirty:
      return
    if not force and time.monotonic() - self._uploaded_at < self._min_interval_s:
      return
    write_bytes(self._path, self._buffer.getvalue())
    self._uploaded_at = time.monotonic()
    self._dirty = False

  def close(self) -> None:
    if not self.closed:
      self.flush()
      self.closed = True
