"""A-LoL's priority sampling (pgx_lab.selection.priority): probabilities, options, frequencies."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab.selection import priority

ADV = jnp.array([0.5, -1.0, 0.0, 1.5, 2.0, -0.2])
PREFERRED = jnp.array([1, 1, 1, 1, 0, 0])


def test_priority_probabilities_by_hand():
  out = priority.priority(ADV)
  np.testing.assert_allclose(out.probs, [0.125, 0, 0, 0.375, 0.5, 0], rtol=1e-6)
  np.testing.assert_array_equal(out.kept, [True, False, False, True, True, False])
  np.testing.assert_allclose(out.dropped_fraction, 0.5)
  np.testing.assert_allclose(out.kept_fraction, 0.5)
  np.testing.assert_array_equal(priority.positive_subset(ADV), out.kept)


def test_three_options_with_preferred_points():
  good = priority.priority(ADV, "priority", preferred=PREFERRED)
  np.testing.assert_allclose(good.probs, [0.25, 0, 0, 0.75, 0, 0], rtol=1e-6)
  np.testing.assert_allclose(good.dropped_fraction, 4 / 6, rtol=1e-6)
  uniform = priority.priority(ADV, "uniform_positive", preferred=PREFERRED)
  np.testing.assert_allclose(uniform.probs, [0.5, 0, 0, 0.5, 0, 0], rtol=1e-6)
  every = priority.priority(ADV, "all_priority", preferred=PREFERRED)
  np.testing.assert_allclose(every.probs, [0.125, 0, 0, 0.375, 0.5, 0], rtol=1e-6)
  # Without `preferred`, "priority" and "all_priority" coincide; uniform is over all positives.
  np.testing.assert_allclose(priority.priority(ADV, "uniform_positive").probs,
                             [1 / 3, 0, 0, 1 / 3, 1 / 3, 0], rtol=1e-6)


def test_empirical_frequencies_and_zero_advantage_never_drawn():
  probs = priority.priority(ADV).probs
  n = 200_000
  idx = np.asarray(jax.jit(priority.sample, static_argnums=2)(jax.random.PRNGKey(0), probs, n))
  freq = np.bincount(idx, minlength=6) / n
  assert np.all(freq[np.asarray(probs) == 0] == 0)
  # Binomial standard error <= 0.5 / sqrt(n); 5 sigma.
  np.testing.assert_allclose(freq, probs, atol=5 * 0.5 / np.sqrt(n))


def test_sample_never_draws_trailing_or_leading_zero_weights():
  probs = jnp.array([0.0, 0.0, 1e-30, 1.0, 0.0, 0.0])
  idx = np.asarray(priority.sample(jax.random.PRNGKey(3), probs, 50_000))
  assert set(np.unique(idx)) <= {2, 3}
  one = np.asarray(priority.sample(jax.random.PRNGKey(1), jnp.array([0.0, 0.0, 0.0, 2.0]), 100))
  np.testing.assert_array_equal(one, 3)


def test_sample_vmaps_over_keys():
  probs = priority.priority(ADV).probs
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  idx = jax.vmap(lambda k: priority.sample(k, probs, 8))(keys)
  assert idx.shape == (4, 8) and idx.dtype == jnp.int32


def test_no_positive_advantage_raises_outside_jit():
  with pytest.raises(ValueError, match="advantages"):
    priority.priority(jnp.array([-1.0, 0.0, -3.0]))
  with pytest.raises(ValueError, match="advantages"):
    priority.priority(ADV, "priority", preferred=jnp.array([0, 1, 1, 0, 0, 1]))


def test_no_positive_advantage_under_jit_gives_documented_empty_result():
  out = jax.jit(priority.priority)(jnp.array([-1.0, 0.0, -3.0]))
  np.testing.assert_array_equal(out.probs, 0.0)
  np.testing.assert_allclose(out.dropped_fraction, 1.0)
  idx = priority.sample(jax.random.PRNGKey(0), out.probs, 5)
  np.testing.assert_array_equal(idx, -1)


@pytest.mark.parametrize("call, arg", [
    (lambda: priority.priority(ADV[None]), "advantages"),
    (lambda: priority.priority(jnp.arange(3)), "advantages"),
    (lambda: priority.priority(ADV, "greedy"), "option"),
    (lambda: priority.priority(ADV, preferred=PREFERRED[:3]), "preferred"),
    (lambda: priority.sample(jax.random.PRNGKey(0), ADV, 0), "batch_size"),
    (lambda: priority.sample(jax.random.PRNGKey(0), ADV[None], 2), "probs"),
])
def test_bad_input_raises(call, arg):
  with pytest.raises(ValueError, match=arg):
    call()
