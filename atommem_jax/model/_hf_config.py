"""Type and range checks of a Hugging Face Qwen3 config.json, before any field is used.

JSON gives strings, booleans and numbers alike; Python would turn "64" into a TypeError deep
in the model, 0 heads into a ZeroDivisionError and "false" into True. `check` names the file
and the field of the first value that is not what transformers writes.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

# Fields that, where present, must be positive numbers ("nullable": null means the default).
_POSITIVE_INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "max_position_embeddings")
_NULLABLE_POSITIVE_INTS = ("num_key_value_heads", "head_dim")
_POSITIVE_FLOATS = ("rms_norm_eps",)
_NULLABLE_POSITIVE_FLOATS = ("rope_theta",)
_OPTIONAL_BOOLS = ("tie_word_embeddings", "attention_bias", "use_sliding_window")
_OPTIONAL_TOKEN_IDS = ("bos_token_id", "pad_token_id")
_OPTIONAL_STRINGS = ("model_type", "hidden_act")
_ROPE_SECTIONS = ("rope_parameters", "rope_scaling")


def _fail(source: str, field: str, value: Any, expected: str):
  raise ValueError(f"{source}: field {field}={value!r}: expected {expected}")


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def _check_positive_float(source: str, field: str, value: Any) -> None:
  if not _is_number(value) or value <= 0:
    _fail(source, field, value, "a positive number")


def check(hf: Mapping[str, Any], source: str) -> None:
  """Raises ValueError naming `source` and the field of the first ill-typed or out-of-range
  value of the Qwen3 config dict `hf`; absent optional fields are left to their defaults."""
  for field in _POSITIVE_INTS:
    if field in hf and (not _is_int(hf[field]) or hf[field] < 1):
      _fail(source, field, hf[field], "a whole number >= 1")
  for field in _NULLABLE_POSITIVE_INTS:
    value = hf.get(field)
    if value is not None and (not _is_int(value) or value < 1):
      _fail(source, field, value, "a whole number >= 1 (or null)")
  for field in _POSITIVE_FLOATS:
    if field in hf:
      _check_positive_float(source, field, hf[field])
  for field in _NULLABLE_POSITIVE_FLOATS:
    if hf.get(field) is not None:
      _check_positive_float(source, field, hf[field])
  for field in _OPTIONAL_BOOLS:
    value = hf.get(field)
    if value is not None and not isinstance(value, bool):
      _fail(source, field, value, "true or false (a JSON boolean, not a string or number)")
  for field in _OPTIONAL_TOKEN_IDS:
    value = hf.get(field)
    if value is not None and (not _is_int(value) or value < 0):
      _fail(source, field, value, "a token id >= 0 (or null)")
  eos = hf.get("eos_token_id")
  if eos is not None:
    ids = eos if isinstance(eos, list) else [eos]
    if not ids or not all(_is_int(i) and i >= 0 for i in ids):
      _fail(source, "eos_token_id", eos, "a token id >= 0 or a non-empty list of them")
  for field in _OPTIONAL_STRINGS:
    value = hf.get(field)
    if value is not None and not isinstance(value, str):
      _fail(source, field, value, "a string")
  architectures = hf.get("architectures")
  if architectures is not None and not (isinstance(architectures, list)
                                        and all(isinstance(a, str) for a in architectures)):
    _fail(source, "architectures", architectures, "a list of class names")
  for section in _ROPE_SECTIONS:
    rope = hf.get(section)
    if rope is None:
      continue
    if not isinstance(rope, dict):
      _fail(source, section, rope, "an object such as {\"rope_type\": \"default\", "
            "\"rope_theta\": 1000000.0} (or null)")
    if rope.get("rope_theta") is not None:
      _check_positive_float(source, f"{section}.rope_theta", rope["rope_theta"])
    for key in ("rope_type", "type"):
      if rope.get(key) is not None and not isinstance(rope[key], str):
        _fail(source, f"{section}.{key}", rope[key], "a string such as \"default\"")
  _check_shapes(hf, source)


def _check_shapes(hf: Mapping[str, Any], source: str) -> None:
  """Head counts that divide: query heads by kv heads, and the width by the heads when
  head_dim is not given (transformers' own default)."""
  heads = hf.get("num_attention_heads")
  if heads is None:
    return
  kv_heads = hf.get("num_key_value_heads") or heads
  if heads % kv_heads:
    _fail(source, "num_key_value_heads", kv_heads,
          f"a divisor of num_attention_heads ({heads})")
  width = hf.get("hidden_size")
  if not hf.get("head_dim") and width is not None and width % heads:
    _fail(source, "head_dim", hf.get("head_dim"), f"set, since hidden_size ({width}) is not a "
          f"multiple of num_attention_heads ({heads})")
