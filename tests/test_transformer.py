"""The causal transformer LM: a numpy re-implementation, causality, padding, KV cache, bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab.models import transformer as tf

CONFIG = tf.TransformerConfig(vocab_size=13, max_len=16, d_model=32, num_layers=2, num_heads=4)


@functools.lru_cache(maxsize=None)
def noisy_params(config=CONFIG, seed=0, scale=0.3):
  """Initial params plus N(0, scale^2) noise, so that attention and logits are far from uniform.

  The noise is drawn with numpy: one compilation (of `init_params`) per config, not two."""
  params = tf.init_params(jax.random.PRNGKey(seed), config)
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: x + scale * rng.standard_normal(x.shape, np.float32), params)


# Jitted once per shape: eager flax dispatches op by op and is slow on a shared CPU.
apply = jax.jit(tf.apply, static_argnums=1)
token_logp_and_entropy = jax.jit(tf.token_logp_and_entropy, static_argnums=1)


def random_tokens(seed, shape, vocab=CONFIG.vocab_size):
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


def reference_forward(params, config, tokens, mask):
  """The documented architecture written out in float64 numpy, independently of flax."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  tokens, mask = np.asarray(tokens), np.asarray(mask)

  def ln(x, q):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-6) * q["scale"] + q["bias"]

  def gelu(x):  # flax's default, the tanh approximation (Hendrycks & Gimpel 2016)
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

  t = tokens.shape[1]
  positions = np.clip(np.cumsum(mask, 1) - 1, 0, None)
  x = p["embed"]["embedding"][tokens] + p["pos_embed"]["embedding"][positions]
  causal = np.tril(np.ones((t, t), bool))
  allowed = causal[None] & ((mask[:, None, :] > 0) | np.eye(t, dtype=bool)[None])  # [B, T, S]
  for i in range(config.num_layers):
    blk = p[f"blocks_{i}"]
    h = ln(x, blk["ln_attn"])
    q, k, v = (np.einsum("btd,dhk->bthk", h, blk["attn"][n]["kernel"]) + blk["attn"][n]["bias"]
               for n in ("query", "key", "value"))
    s = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(q.shape[-1])
    s = np.where(allowed[:, None], s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = np.einsum("bhts,bshk->bthk", w, v)
    x = x + np.einsum("bthk,hkd->btd", o, blk["attn"]["out"]["kernel"]) + blk["attn"]["out"]["bias"]
    h = ln(x, blk["ln_mlp"])
    h = gelu(h @ blk["mlp_in"]["kernel"] + blk["mlp_in"]["bias"])
    x = x + h @ blk["mlp_out"]["kernel"] + blk["mlp_out"]["bias"]
  h = ln(x, p["ln_final"])
  if config.tie_embeddings:  # logits = h E^T (Press & Wolf 2017)
    logits = h @ p["embed"]["embedding"].T
  else:
    logits = h @ p["head"]["kernel"] + p["head"]["bias"]
  values = (h @ p["value"]["kernel"] + p["value"]["bias"])[..., 0] if config.value_head else None
  return logits, values


def test_forward_matches_numpy_reference_with_padding():
  params = noisy_params(CONFIG)
  tokens = random_tokens(0, (3, 9))
  mask = jnp.array([[1] * 9, [0, 0, 0] + [1] * 6, [0] + [1] * 8], jnp.int32)
  logits, values = apply(params, CONFIG, tokens, mask)
  assert logits.shape == (3, 9, CONFIG.vocab_size) and values.shape == (3, 9)
  ref_logits, ref_values = reference_forward(params, CONFIG, tokens, mask)
  np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(values, ref_values, atol=1e-4, rtol=1e-4)


def test_no_value_head_and_tied_embeddings():
  config = CONFIG._replace(value_head=False, tie_embeddings=True)
  shapes = jax.eval_shape(lambda key: tf.init_params(key, config), jax.random.PRNGKey(0))
  params = {k: v for k, v in noisy_params().items() if k not in ("value", "head")}
  assert jax.tree.structure(shapes) == jax.tree.structure(params)
  tokens = random_tokens(1, (2, 5))
  logits, values = apply(params, config, tokens)
  assert values is None
  ref_logits, _ = reference_forward(params, config, tokens, np.ones((2, 5), np.int32))
  np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=1e-4)


def test_causality():
  params = noisy_params(CONFIG)
  tokens = random_tokens(2, (2, 10))
  changed = tokens.at[:, 6].set((tokens[:, 6] + 1) % CONFIG.vocab_size)
  a, va = apply(params, CONFIG, tokens)
  b, vb = apply(params, CONFIG, changed)
  np.testing.assert_array_equal(a[:, :6], b[:, :6])
  np.testing.assert_array_equal(va[:, :6], vb[:, :6])
  assert np.all(np.abs(np.asarray(a[:, 6:]) - np.asarray(b[:, 6:])).max(-1) > 1e-4)


def test_left_padding_equals_unpadded_and_ignores_pad_ids():
  params = noisy_params(CONFIG)
  seq = random_tokens(3, (1, 7))
  unpadded, v_unpadded = apply(params, CONFIG, seq)
  for pad_id in (0, 5):
    padded = jnp.concatenate([jnp.full((1, 4), pad_id, jnp.int32), seq], axis=1)
    mask = jnp.concatenate([jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 7), jnp.int32)], axis=1)
    logits, values = apply(params, CONFIG, padded, mask)
    np.testing.assert_allclose(logits[:, 4:], unpadded, atol=1e-5)
    np.testing.assert_allclose(values[:, 4:], v_unpadded, atol=1e-5)


def test_token_logp_and_entropy_against_numpy():
  params = noisy_params(CONFIG)
  tokens = random_tokens(4, (2, 8))
  mask = jnp.array([[0, 0] + [1] * 6, [1] * 8], jnp.int32)
  logp, entropy = token_logp_and_entropy(params, CONFIG, tokens, mask)
  assert logp.shape == entropy.shape == (2, 7)
  ref_logits, _ = reference_forward(params, CONFIG, tokens, mask)
  z = ref_logits[:, :-1] - ref_logits[:, :-1].max(-1, keepdims=True)
  probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
  nxt = np.asarray(tokens)[:, 1:]
  want = np.log(np.take_along_axis(probs, nxt[..., None], -1)[..., 0])
  np.testing.assert_allclose(logp, want, atol=1e-4)
  np.testing.assert_allclose(entropy, -(probs * np.log(probs)).sum(-1), atol=1e-4)


def test_gradient_of_logp_is_finite_and_nonzero_with_padding():
  params = noisy_params(CONFIG)
  tokens = random_tokens(5, (2, 8))
  mask = jnp.array([[0, 0, 0] + [1] * 5, [1] * 8], jnp.int32)
  loss = lambda p: jnp.sum(token_logp_and_entropy(p, CONFIG, tokens, mask)[0] * mask[:, 1:])
  grads = jax.jit(jax.grad(loss))(params)
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert np.abs(np.asarray(grads["blocks_0"]["attn"]["query"]["kernel"])).max() > 0


def test_cached_decoding_equals_full_forward():
  """Prefill a left-padded prompt, then feed the rest token by token through decode_step."""
  params = noisy_params(CONFIG)
  b, p, s = 2, 5, 12
  tokens = random_tokens(6, (b, s))
  mask = jnp.ones((b, s), jnp.int32).at[0, :2].set(0)
  full_logits, full_values = apply(params, CONFIG, tokens, mask)

  @jax.jit
  def cached(params, tokens, mask):
    cache = tf.init_cache(CONFIG, b, s)
    logits, values, cache = tf.prefill(params, CONFIG, tokens[:, :p], mask, cache)

    def step(cache, t):
      tok = jax.lax.dynamic_index_in_dim(tokens, t, axis=1, keepdims=False)
      lg, val, cache = tf.decode_step(params, CONFIG, tok, t, cache, mask)
      return cache, (lg, val)

    _, (lg, val) = jax.lax.scan(step, cache, jnp.arange(p, s))
    return (jnp.concatenate([logits, jnp.moveaxis(lg, 0, 1)], 1),
            jnp.concatenate([values, val.T], 1))

  logits, values = cached(params, tokens, mask)
  real = np.asarray(mask, bool)  # padded slots' outputs are unspecified
  np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(full_logits)[real], atol=1e-4)
  np.testing.assert_allclose(np.asarray(values)[real], np.asarray(full_values)[real], atol=1e-4)


def test_bad_input_names_argument():
  params = noisy_params(CONFIG)
  good = jnp.zeros((2, 4), jnp.int32)
  with pytest.raises(ValueError, match="tokens"):
    tf.apply(params, CONFIG, good.at[0, 1].set(CONFIG.vocab_size))
  with pytest.raises(ValueError, match="tokens"):
    tf.apply(params, CONFIG, good.at[0, 1].set(-1))
  with pytest.raises(ValueError, match="tokens"):
    tf.apply(params, CONFIG, good.astype(jnp.float32))
  with pytest.raises(ValueError, match="tokens"):
    tf.token_logp_and_entropy(params, CONFIG, jnp.zeros((2, CONFIG.max_len + 1), jnp.int32))
  with pytest.raises(ValueError, match="tokens"):
    tf.apply(params, CONFIG, jnp.zeros((4,), jnp.int32))
  with pytest.raises(ValueError, match="attention_mask"):
    tf.apply(params, CONFIG, good, jnp.ones((2, 5)))
  with pytest.raises(ValueError, match="d_model"):
    tf.init_params(jax.random.PRNGKey(0), CONFIG._replace(d_model=30))
  with pytest.raises(ValueError, match="max_len"):
    tf.init_cache(CONFIG, 2, CONFIG.max_len + 1)
  cache = tf.init_cache(CONFIG, 2, 8)
  with pytest.raises(ValueError, match="token"):
    tf.decode_step(params, CONFIG, jnp.zeros((2,), jnp.float32), 0, cache, jnp.ones((2, 8)))
  with pytest.raises(ValueError, match="attention_mask_so_far"):
    tf.decode_step(params, CONFIG, jnp.zeros((2,), jnp.int32), 0, cache, jnp.ones((2, 7)))
  with pytest.raises(ValueError, match="cache"):
    tf.decode_step(params, CONFIG, jnp.zeros((3,), jnp.int32), 0, cache, jnp.ones((3, 8)))


def test_apply_with_hidden_matches_apply_and_the_head():
  cfg = tf.TransformerConfig(vocab_size=11, max_len=8, d_model=16, num_layers=1,
                                      num_heads=2, value_head=True)
  params = tf.init_params(jax.random.PRNGKey(0), cfg)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 8), 0, 11)
  mask = jnp.ones((3, 8), jnp.int32).at[0, :2].set(0)
  logits, values = tf.apply(params, cfg, tokens, mask)
  logits_h, values_h, hidden = tf.apply_with_hidden(params, cfg, tokens, mask)
  np.testing.assert_allclose(logits_h, logits, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(values_h, values, rtol=1e-6, atol=1e-6)
  assert hidden.shape == (3, 8, 16)
  # The hidden state is the head's input: the value head is an affine map of it.
  v = hidden @ params["value"]["kernel"][:, 0] + params["value"]["bias"][0]
  np.testing.assert_allclose(v, values, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="attention_mask"):
    tf.apply_with_hidden(params, cfg, tokens, mask[:, :4])
