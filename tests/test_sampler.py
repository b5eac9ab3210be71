"""The KV-cache sampler against naive full-forward decoding and transformers' generate."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from atommem_jax.model import config as config_lib
from atommem_jax.model import hf
from atommem_jax.model import qwen3
from atommem_jax.rollout import sampler

CONFIG = config_lib.Qwen3Config(vocab_size=97, hidden_size=32, intermediate_size=64,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                head_dim=16, rope_theta=10_000.0, tie_word_embeddings=False,
                                bos_token_id=None, eos_token_id=None, pad_token_id=0)
PROMPTS = [[5, 17, 33, 2, 8, 61, 40], [12, 9, 70], [44, 3, 3, 90, 21]]


@pytest.fixture(scope="module")
def models():
  torch.manual_seed(0)
  hf_config = transformers.Qwen3Config(
      vocab_size=CONFIG.vocab_size, hidden_size=CONFIG.hidden_size,
      intermediate_size=CONFIG.intermediate_size, num_hidden_layers=CONFIG.num_hidden_layers,
      num_attention_heads=CONFIG.num_attention_heads,
      num_key_value_heads=CONFIG.num_key_value_heads, head_dim=CONFIG.head_dim,
      rope_theta=CONFIG.rope_theta, tie_word_embeddings=False, pad_token_id=0,
      bos_token_id=None, eos_token_id=None)
  model = transformers.Qwen3ForCausalLM(hf_config).eval()
  with torch.no_grad():  # larger weights than the default init, so greedy paths vary
    for p in model.parameters():
      p.mul_(4.0 if p.ndim > 1 else 1.0)
  params = hf.hf_state_dict_to_params(
      CONFIG, {k: v.numpy() for k, v in model.state_dict().items()})
  return model, jax.tree.map(jnp.asarray, params)


def _naive_greedy(params, prompt, steps):
  """Re-runs the full forward over the whole sequence for every new token (no cache)."""
  full_forward = jax.jit(lambda p, t: qwen3.logits(CONFIG, p, t))
  tokens = np.zeros((1, len(prompt) + steps), np.int32)  # right zeros never reach earlier positions
  tokens[0, :len(prompt)] = prompt
  for position in range(len(prompt), len(prompt) + steps):
    logits = full_forward(params, jnp.asarray(tokens))
    tokens[0, position] = int(jnp.argmax(logits[0, position - 1]))
  return tokens[0, len(prompt):].tolist()


def _generate(params, sampling, prompts=PROMPTS, length=8, seed=0):
  tokens, mask = sampler.left_pad(prompts, length, pad_id=0)
  return sampler.generate(CONFIG, params, jnp.asarray(tokens), jnp.asarray(mask),
                          jax.random.key(seed), sampling)


def test_greedy_equals_naive_full_forward_decoding(models):
  _, params = models
  out = _generate(params, sampler.SamplingConfig(max_new_tokens=6, greedy=True))
  for row, prompt in enumerate(PROMPTS):
    assert np.asarray(out.tokens[row]).tolist() == _naive_greedy(params, prompt, 6)
  assert np.asarray(out.lengths).tolist() == [6, 6, 6]


def test_greedy_equals_transformers_generate(models):
  model, params = models
  out = _generate(params, sampler.SamplingConfig(max_new_tokens=8, greedy=True))
  tokens, mask = sampler.left_pad(PROMPTS, 8, pad_id=0)
  with torch.no_grad():
    reference = model.generate(input_ids=torch.from_numpy(tokens).long(),
                               attention_mask=torch.from_numpy(mask).long(), do_sample=False,
                               max_new_tokens=8, min_new_tokens=8, pad_token_id=0)
  np.testing.assert_array_equal(np.asarray(out.tokens), reference[:, 8:].numpy())


def test_logprobs_are_those_of_the_full_forward(models):
  _, params = models
  sampling = sampler.SamplingConfig(max_new_tokens=5, temperature=0.7)
  out = _generate(params, sampling, seed=3)
  for row, prompt in enumerate(PROMPTS):
    generated = np.asarray(out.tokens[row]).tolist()
    logits = qwen3.logits(CONFIG, params, jnp.asarray([prompt + generated]))[0]
    logp = jax.nn.log_softmax(logits[len(prompt) - 1:-1] / 0.7, axis=-1)
    expected = np.take_along_axis(np.asarray(logp), np.asarray(generated)[:, None], axis=-1)[:, 0]
    np.testing.assert_allclose(np.asarray(out.logprobs[row]), expected, atol=1e-4)


def test_rows_stop_at_their_own_eos(models):
  _, params = models
  greedy = _generate(params, sampler.SamplingConfig(max_new_tokens=6, greedy=True))
  rows = np.asarray(greedy.tokens).tolist()
  first, eos = next((r, t) for r, row in enumerate(rows) for i, t in enumerate(row)
                    if i >= 1 and t not in row[:i])  # a token that stops row `first` early
  out = _generate(params, sampler.SamplingConfig(max_new_tokens=6, greedy=True, eos_ids=(eos,),
                                                 pad_id=0))
  for row in range(len(PROMPTS)):
    reference = np.asarray(greedy.tokens[row]).tolist()
    stop = reference.index(eos) + 1 if eos in reference else 6
    assert int(out.lengths[row]) == stop
    assert np.asarray(out.tokens[row, :stop]).tolist() == reference[:stop]
    assert np.all(np.asarray(out.tokens[row, stop:]) == 0)
    assert np.all(np.asarray(out.logprobs[row, stop:]) == 0)
  assert int(out.lengths[first]) == rows[first].index(eos) + 1 < 6


def test_top_k_one_and_tiny_top_p_are_greedy(models):
  _, params = models
  greedy = _generate(params, sampler.SamplingConfig(max_new_tokens=5, greedy=True))
  top_k = _generate(params, sampler.SamplingConfig(max_new_tokens=5, temperature=1.5, top_k=1), seed=7)
  top_p = _generate(params, sampler.SamplingConfig(max_new_tokens=5, temperature=1.5, top_p=1e-6), seed=8)
  np.testing.assert_array_equal(np.asarray(top_k.tokens), np.asarray(greedy.tokens))
  np.testing.assert_array_equal(np.asarray(top_p.tokens), np.asarray(greedy.tokens))


def test_first_token_frequencies_follow_the_filtered_distribution(models):
  _, params = models
  prompt, rows, temperature, top_p = PROMPTS[1], 4000, 1.3, 0.8
  logits = np.asarray(qwen3.logits(CONFIG, params, jnp.asarray([prompt]))[0, -1], np.float64)
  probs = np.exp((logits - logits.max()) / temperature)
  probs /= probs.sum()
  order = np.argsort(-probs)
  kept = order[: np.searchsorted(np.cumsum(probs[order]), top_p) + 1]  # nucleus, numpy reference
  nucleus = np.zeros_like(probs)
  nucleus[kept] = probs[kept] / probs[kept].sum()
  out = _generate(params, sampler.SamplingConfig(max_new_tokens=1, temperature=temperature,
                                                 top_p=top_p), prompts=[prompt] * rows, seed=11)
  counts = np.bincount(np.asarray(out.tokens[:, 0]), minlength=CONFIG.vocab_size) / rows
  assert set(np.flatnonzero(counts)) <= set(kept.tolist())
  np.testing.assert_allclose(counts, nucleus, atol=4 * np.sqrt(0.25 / rows))


def test_greedy_pick_is_the_first_maximum_and_its_log_softmax():
  """Against numpy (float64) on rows with tied maxima, including a tie at index 0."""
  logits = np.random.RandomState(3).randint(-4, 3, (5, 1000)).astype(np.float32)
  logits[0, :] = -5.0
  logits[0, [0, 999]] = 7.0
  token, logprob = jax.jit(lambda x: sampler._pick(
      x, jax.random.key(0), sampler.SamplingConfig(greedy=True)))(jnp.asarray(logits))
  expected = logits.argmax(axis=-1)
  assert np.asarray(token).tolist() == expected.tolist() and expected[0] == 0
  x = logits.astype(np.float64)
  log_softmax = x - x.max(-1, keepdims=True)
  log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
  np.testing.assert_allclose(logprob, log_softmax[np.arange(5), expected], rtol=0, atol=1e-5)


def test_bucketing_and_padding_errors():
  assert sampler.bucket_length(5, (8, 16)) == 8
  assert sampler.bucket_length(16, (16, 8)) == 16
  with pytest.raises(ValueError, match="largest bucket 16"):
    sampler.bucket_length(17, (8, 16))
  tokens, mask = sampler.left_pad([[1, 2], []], 3, pad_id=9)
  assert tokens.tolist() == [[9, 1, 2], [9, 9, 9]] and mask.tolist() == [[0, 1, 1], [0, 0, 0]]
  with pytest.raises(ValueError, match="prompt 0 has 4 tokens"):
    sampler.left_pad([[1, 2, 3, 4]], 3, pad_id=0)
  with pytest.raises(ValueError, match="temperature"):
    sampler.SamplingConfig(temperature=0.0)


@pytest.mark.parametrize("vocab", [50, 151_936])
def test_nucleus_keeps_the_tokens_a_sorted_cumulative_sum_keeps(vocab):
  """The bisection's nucleus against a float64 numpy sort, on flat and peaked rows."""
  rng = np.random.RandomState(4)
  scales = [0.01, 1.0, 5.0]  # a random model's flat rows to a trained model's peaked ones
  logits = np.stack([rng.normal(size=vocab) * scale for scale in scales]).astype(np.float32)
  for top_k, top_p in [(0, 0.5), (0, 0.9), (0, 0.99), (20, 0.9)]:
    sampling = sampler.SamplingConfig(top_k=top_k, top_p=top_p)
    got = np.isfinite(np.asarray(jax.jit(
        lambda x, s=sampling: sampler._filtered_logits(x, s))(jnp.asarray(logits))))
    for row, values in enumerate(logits.astype(np.float64)):
      order = np.argsort(-values, kind="stable")
      if top_k:
        order = order[:top_k]
      probs = np.exp(values[order] - values[order].max())
      probs /= probs.sum()
      mass_before = np.cumsum(probs) - probs
      want = np.zeros(vocab, bool)
      want[order[mass_before < top_p]] = True
      # Only a token whose mass before lies within float32 rounding of top_p may differ.
      differ = np.flatnonzero(got[row] != want)
      borderline = np.abs(mass_before - top_p) < 1e-5
      assert set(differ) <= set(order[borderline]), (top_k, top_p, row, differ)
      assert got[row].sum() >= 1
