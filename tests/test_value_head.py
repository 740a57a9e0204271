"""A-LoL's value head (pgx_lab.models.value_head) and its fitting (pgx_lab.train.value_fit)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab.models import transformer
from pgx_lab.models.value_head import AttentionValueHead
from pgx_lab.train import value_fit


def _init_apply(head, hidden, mask):
  """Jitted init and apply (eager flax attention is slow to trace op by op)."""
  params = jax.jit(lambda h, m: head.init(jax.random.PRNGKey(1), h, m)["params"])(hidden, mask)
  return params, jax.jit(lambda p, h, m: head.apply({"params": p}, h, m))


def _data(key, n=256, t=6, d=8):
  k1, k2, k3 = jax.random.split(key, 3)
  hidden = jax.random.normal(k1, (n, t, d))
  lengths = jax.random.randint(k2, (n,), 1, t + 1)
  mask = (jnp.arange(t)[None] >= t - lengths[:, None]).astype(jnp.float32)  # left padding
  u = jax.random.normal(k3, (d,))
  pooled = jnp.sum(hidden * mask[..., None], 1) / jnp.sum(mask, 1, keepdims=True)
  targets = jax.nn.sigmoid(2.0 * pooled @ u)  # in (0, 1): representable by mean pooling
  return hidden, mask, targets


def test_shapes_and_range():
  head = AttentionValueHead(num_heads=2, max_value=3.0)
  hidden, mask, _ = _data(jax.random.PRNGKey(0), n=5)
  params, apply = _init_apply(head, hidden, mask)
  v = apply(params, hidden, mask)
  assert v.shape == (5,) and np.all((np.asarray(v) > 0) & (np.asarray(v) < 3.0))
  assert params["query"].shape == (8,)


def test_padding_is_ignored():
  head = AttentionValueHead(num_heads=2)
  hidden, mask, _ = _data(jax.random.PRNGKey(0), n=16)
  params, apply = _init_apply(head, hidden, mask)
  v = apply(params, hidden, mask)
  noise = 100.0 * jax.random.normal(jax.random.PRNGKey(2), hidden.shape)
  v2 = apply(params, jnp.where(mask[..., None] > 0, hidden, noise), mask)
  np.testing.assert_allclose(v, v2, rtol=1e-5, atol=1e-6)
  # The padding can also be cut away: row 0 with only its real positions.
  real = np.asarray(mask[0]) > 0
  v_cut = apply(params, hidden[:1, real], mask[:1, real])
  np.testing.assert_allclose(v_cut, v[:1], rtol=1e-5, atol=1e-6)
  # All-padding rows stay finite.
  assert np.all(np.isfinite(apply(params, hidden, jnp.zeros_like(mask))))


def test_fits_a_known_function():
  hidden, mask, targets = _data(jax.random.PRNGKey(0))
  fit = value_fit.fit_value_head(jax.random.PRNGKey(1), hidden, mask, targets, num_heads=2,
                                 epochs=40, batch_size=32, learning_rate=3e-3)
  var = float(jnp.var(targets))
  pred = value_fit.predict(fit.params, hidden, mask, num_heads=2)
  mse = float(jnp.mean((pred - targets) ** 2))
  assert mse < 0.05 * var, (mse, var)
  # The kept head is the epoch with the lowest recorded MSE, and the record matches it.
  assert int(fit.best_epoch) == int(np.argmin(np.asarray(fit.mse)))
  np.testing.assert_allclose(mse, float(np.min(np.asarray(fit.mse))), rtol=1e-4)
  # A constant predictor cannot do this well (its best MSE is the variance).
  assert float(fit.mse[0]) > mse


def test_prompt_hidden_states_are_the_models_final_states():
  cfg = transformer.TransformerConfig(vocab_size=11, max_len=8, d_model=16, num_layers=1,
                                      num_heads=2)
  params = transformer.init_params(jax.random.PRNGKey(0), cfg)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 5), 0, 11)
  mask = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
  h = jax.jit(value_fit.prompt_hidden_states, static_argnums=1)(params, cfg, tokens, mask)
  assert h.shape == (3, 5, 16)
  logits, values = jax.jit(transformer.apply, static_argnums=1)(params, cfg, tokens, mask)
  # Logits and the model's own value head are affine maps of the final state.
  np.testing.assert_allclose(h @ params["head"]["kernel"] + params["head"]["bias"], logits,
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose((h @ params["value"]["kernel"])[..., 0] + params["value"]["bias"],
                             values, rtol=1e-4, atol=1e-5)


def test_advantages_are_reward_minus_value():
  np.testing.assert_allclose(value_fit.advantages(jnp.array([1.0, 0.2]), jnp.array([0.4, 0.5])),
                             [0.6, -0.3], rtol=1e-6)


@pytest.mark.parametrize("call, arg", [
    (lambda h, m, y: value_fit.fit_value_head(jax.random.PRNGKey(0), h[0], m, y), "hidden"),
    (lambda h, m, y: value_fit.fit_value_head(jax.random.PRNGKey(0), h, m[:, :2], y), "mask"),
    (lambda h, m, y: value_fit.fit_value_head(jax.random.PRNGKey(0), h, m, y[:3]), "targets"),
    (lambda h, m, y: value_fit.fit_value_head(jax.random.PRNGKey(0), h, m, y, batch_size=99),
     "batch_size"),
    (lambda h, m, y: value_fit.fit_value_head(jax.random.PRNGKey(0), h, m, y, epochs=0),
     "epochs"),
    (lambda h, m, y: value_fit.advantages(y, y[:2]), "values"),
    (lambda h, m, y: AttentionValueHead(num_heads=3).init(jax.random.PRNGKey(0), h, m),
     "num_heads"),
])
def test_bad_input_raises(call, arg):
  hidden, mask, targets = _data(jax.random.PRNGKey(0), n=8)
  with pytest.raises(ValueError, match=arg):
    call(hidden, mask, targets)


def test_greedy_value_targets_by_closed_form():
  """A model whose output head always prefers digit 1 answers "11...1" (no EOS) greedily; on the
  copy task with partial credit its reward is (# ones in the target) / (response length)."""
  from pgx_lab.envs.token_tasks import make_task, vocab
  task = make_task("copy", min_difficulty=2, max_difficulty=3, num_symbols=2,
                   reward_type="partial")
  cfg = transformer.TransformerConfig(vocab_size=vocab.VOCAB_SIZE, max_len=12, d_model=16,
                                      num_layers=1, num_heads=2)
  params = transformer.init_params(jax.random.PRNGKey(0), cfg)
  head = params["head"]
  params = {**params, "head": {"kernel": jnp.zeros_like(head["kernel"]),
                               "bias": jnp.zeros_like(head["bias"]).at[vocab.DIGIT_0 + 1].set(5.0)}}
  prompts = task.sample_prompts(jax.random.PRNGKey(1), 16)
  greedy = jax.jit(value_fit.greedy_value_targets, static_argnums=(2, 3))
  r = greedy(jax.random.PRNGKey(2), params, cfg, task, prompts)
  ones = np.sum(np.asarray(prompts.target) == vocab.DIGIT_0 + 1, axis=1)
  np.testing.assert_allclose(r, ones / task.response_len, rtol=1e-6)
  assert np.any(ones > 0)
