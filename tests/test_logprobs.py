"""Chunked token log-probs and entropies (model/logprobs.py) against the dense path: the full
forward's [B, T, V] logits through a numpy (values) or jnp (gradients) log-softmax, on packed
rows, at a sampling temperature, for chunk sizes that do and do not divide the row."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atommem_jax.model import logprobs as logprobs_lib
from atommem_jax.model import qwen3
from atommem_jax.model.config import Qwen3Config
from atommem_jax.train import batch as batch_lib

VOCAB = 97  # no other dimension has this size, so [.., V] arrays are easy to spot
TEMPERATURE = 0.7
LENGTH = 13  # 12 predicted positions


def _config(tied: bool) -> Qwen3Config:
  return Qwen3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                     tie_word_embeddings=tied, bos_token_id=None, eos_token_id=2,
                     pad_token_id=0)


@functools.cache
def _params(tied: bool):
  params = qwen3.init_params(_config(tied), jax.random.key(0))
  # Larger weights than HF init, so that the distributions are far from uniform.
  head = ("embedder", "embedding") if tied else ("lm_head", "kernel")
  params[head[0]][head[1]] = params[head[0]][head[1]] * 40.0
  return params


def _batch() -> batch_lib.TrainBatch:
  """Packed rows: several segments per row, padding, an all-padding row."""
  rng = np.random.RandomState(0)
  examples = [batch_lib.Example(rng.randint(3, VOCAB, p).tolist(),
                                rng.randint(3, VOCAB, r).tolist())
              for p, r in [(3, 4), (2, 2), (4, 5), (1, 3), (2, 6)]]
  batch = batch_lib.pack_examples(examples, length=LENGTH, num_rows=4)
  assert np.asarray(batch.segment_ids).max() > 1 and not np.asarray(batch.segment_ids)[-1].any()
  return batch


@functools.partial(jax.jit, static_argnums=0)
def _hidden(config, params, batch):
  hidden, _ = qwen3.forward(config, params, jnp.asarray(batch.tokens),
                            jnp.asarray(batch.positions),
                            segment_ids=jnp.asarray(batch.segment_ids), hidden_only=True)
  return hidden


@functools.partial(jax.jit, static_argnums=0)
def _forward_logits(config, params, batch):
  logits, _ = qwen3.forward(config, params, jnp.asarray(batch.tokens),
                            jnp.asarray(batch.positions),
                            segment_ids=jnp.asarray(batch.segment_ids))
  return logits


@functools.partial(jax.jit, static_argnums=(0, 3))
def _chunked(config, params, batch, chunk):
  return logprobs_lib.token_logprobs(config, params, _hidden(config, params, batch),
                                     jnp.asarray(batch.tokens), temperature=TEMPERATURE,
                                     chunk=chunk, with_entropy=True)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_lm_head_of_hidden_states_is_the_forward_logits(tied):
  config, params, batch = _config(tied), _params(tied), _batch()
  np.testing.assert_array_equal(
      np.asarray(qwen3.lm_head(config, params, _hidden(config, params, batch))),
      np.asarray(_forward_logits(config, params, batch)))


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_chunked_logprobs_and_entropy_match_numpy_on_dense_logits(tied):
  config, params, batch = _config(tied), _params(tied), _batch()
  logits = np.asarray(_forward_logits(config, params, batch), np.float64) / TEMPERATURE
  log_probs = logits - logits.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  tokens = np.asarray(batch.tokens)
  want_logprobs = np.zeros(batch.shape)
  want_entropy = np.zeros(batch.shape)
  for row in range(batch.shape[0]):
    for t in range(1, LENGTH):
      want_logprobs[row, t] = log_probs[row, t - 1, tokens[row, t]]
      want_entropy[row, t] = -(np.exp(log_probs[row, t - 1]) * log_probs[row, t - 1]).sum()
  assert np.median(want_entropy[:, 1:]) < 0.5 * np.log(VOCAB)  # far from uniform
  for chunk in (0, 1, 4, 5, 12, 40):  # 5 does not divide the 12 predicted positions
    got_logprobs, got_entropy = _chunked(config, params, batch, chunk)
    np.testing.assert_allclose(np.asarray(got_logprobs), want_logprobs, rtol=1e-5, atol=1e-5,
                               err_msg=f"chunk={chunk}")
    np.testing.assert_allclose(np.asarray(got_entropy), want_entropy, rtol=1e-5, atol=1e-5,
                               err_msg=f"chunk={chunk}")
  without_entropy = logprobs_lib.token_logprobs(config, params, _hidden(config, params, batch),
                                                jnp.asarray(batch.tokens), chunk=5)
  assert without_entropy[1] is None


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_chunked_gradients_match_the_dense_log_softmax(tied):
  config, params, batch = _config(tied), _params(tied), _batch()
  rng = np.random.RandomState(1)
  logprob_weights = jnp.asarray(rng.normal(size=batch.shape).astype(np.float32))
  entropy_weights = jnp.asarray(rng.normal(size=batch.shape).astype(np.float32))
  tokens = jnp.asarray(batch.tokens)

  def dense(p):
    logits = _forward_logits(config, p, batch)[:, :-1] / TEMPERATURE
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    logprobs = jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
    return (jnp.sum(logprob_weights[:, 1:] * logprobs)
            + jnp.sum(entropy_weights[:, 1:] * entropy))

  def chunked(p, chunk):
    logprobs, entropy = _chunked(config, p, batch, chunk)
    return jnp.sum(logprob_weights * logprobs) + jnp.sum(entropy_weights * entropy)

  want = jax.jit(jax.grad(dense))(params)
  for chunk in (0, 5):
    got = jax.jit(jax.grad(functools.partial(chunked, chunk=chunk)))(params)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
      scale = float(np.abs(np.asarray(w)).max())
      np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5 * scale,
                                 err_msg=f"chunk={chunk} {jax.tree_util.keystr(path)}")


def _vocab_arrays(jaxpr) -> list[tuple[int, ...]]:
  """Shapes of every [B, T, V] value in a jaxpr and the jaxprs nested in it (scan, remat)."""
  shapes = []
  for eqn in jaxpr.eqns:
    for var in (*eqn.invars, *eqn.outvars):
      shape = getattr(var.aval, "shape", ())
      if len(shape) == 3 and shape[-1] == VOCAB:
        shapes.append(shape)
    for param in eqn.params.values():
      for inner in param if isinstance(param, (tuple, list)) else (param,):
        if isinstance(inner, jax.extend.core.ClosedJaxpr):
          shapes += _vocab_arrays(inner.jaxpr)
        elif isinstance(inner, jax.extend.core.Jaxpr):
          shapes += _vocab_arrays(inner)
  return shapes


@pytest.mark.parametrize("chunk", [0, 5])
def test_chunked_gradient_program_never_holds_a_whole_rows_logits(chunk):
  config, params, batch = _config(False), _params(False), _batch()

  def loss(p):
    logprobs, entropy = _chunked(config, p, batch, chunk)
    return jnp.sum(logprobs) + jnp.sum(entropy)

  shapes = _vocab_arrays(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
  longest = max(shape[1] for shape in shapes)
  assert longest == (chunk or LENGTH - 1), shapes  # 0: the unchunked path does hold them


@pytest.mark.parametrize("max_needed", [0, 3], ids=["all-positions", "gathered"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_only_needed_positions_are_computed_and_they_are_exact(tied, max_needed):
  config, params, batch = _config(tied), _params(tied), _batch()
  tokens = jnp.asarray(batch.tokens)
  needed = np.zeros(batch.shape, bool)
  needed[0, 6:8] = True  # predicted positions 5-6: the second chunk of 4 only
  needed[2, 7] = True
  chunk = 4
  hidden = _hidden(config, params, batch)
  dense_logprobs, dense_entropy = _chunked(config, params, batch, 0)
  got_logprobs, got_entropy = logprobs_lib.token_logprobs(
      config, params, hidden, tokens, temperature=TEMPERATURE, chunk=chunk, with_entropy=True,
      needed=jnp.asarray(needed), max_needed=max_needed)
  if max_needed:  # only the needed entries were gathered and projected
    computed = needed
  else:  # entries 1-12 are predicted positions 0-11; chunk c holds entries 4c+1 .. 4c+4
    computed = np.zeros(batch.shape, bool)
    computed[:, 5:9] = True
  # So that the zeros checked below are not the values themselves:
  assert (np.abs(np.asarray(dense_logprobs)[~computed]) > 1e-3).sum() >= 10
  for got, dense in ((got_logprobs, dense_logprobs), (got_entropy, dense_entropy)):
    got, dense = np.asarray(got), np.asarray(dense)
    np.testing.assert_allclose(got[computed], dense[computed], rtol=1e-5, atol=1e-5)
    assert not got[~computed].any()  # never computed

  weights = jnp.asarray(np.random.RandomState(2).normal(size=batch.shape).astype(np.float32)
                        * needed)

  def loss(p, chunk, mask, max_needed):
    logprobs, entropy = logprobs_lib.token_logprobs(
        config, p, _hidden(config, p, batch), tokens, temperature=TEMPERATURE, chunk=chunk,
        with_entropy=True, needed=mask, max_needed=max_needed)
    return jnp.sum(weights * logprobs) + jnp.sum(weights * entropy)

  want = jax.jit(jax.grad(functools.partial(loss, chunk=0, mask=None, max_needed=0)))(params)
  got = jax.jit(jax.grad(functools.partial(loss, chunk=chunk, mask=jnp.asarray(needed),
                                           max_needed=max_needed)))(params)
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    scale = float(np.abs(np.asarray(w)).max())
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5 * scale,
                               err_msg=jax.tree_util.keystr(path))
