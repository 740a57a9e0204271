"""PPO's clipped value loss: hand values, the unclipped limit, masks and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab.estimators import value_loss


def test_hand_values():
  v = jnp.array([1.0, 0.0, 2.0])
  v_old = jnp.array([0.0, 0.0, 2.0])
  r = jnp.array([2.0, 1.0, 2.5])
  # entry 0: (1-2)^2 = 1, clipped V = 0.2 -> (0.2-2)^2 = 3.24 -> max 3.24
  # entry 1: 1, clipped V = 0 -> 1 -> 1;  entry 2: 0.25, V unchanged -> 0.25
  want = 0.5 * (3.24 + 1.0 + 0.25) / 3
  np.testing.assert_allclose(value_loss.clipped_value_loss(v, v_old, r, clip=0.2), want, rtol=1e-6)
  np.testing.assert_allclose(value_loss.clipped_value_loss(v, v_old, r, clip=None),
                             0.5 * (1.0 + 1.0 + 0.25) / 3, rtol=1e-6)


def test_gradient_is_zero_where_the_clipped_term_wins():
  v_old, r = jnp.zeros(()), jnp.array(2.0)
  g = jax.grad(lambda v: value_loss.clipped_value_loss(v, v_old, r, clip=0.2))(jnp.array(1.0))
  # max(1, 3.24) takes the clipped branch, constant in V beyond the clip.
  assert float(g) == 0.0
  g = jax.grad(lambda v: value_loss.clipped_value_loss(v, v_old, r, clip=0.2))(jnp.array(0.1))
  np.testing.assert_allclose(g, 0.1 - 2.0, rtol=1e-6)


def test_mask_and_all_masked():
  v = jnp.array([[1.0, 5.0], [0.0, 0.0]])
  mask = jnp.array([[1.0, 0.0], [0.0, 0.0]])
  out = value_loss.clipped_value_loss(v, jnp.zeros_like(v), jnp.zeros_like(v), mask, clip=None)
  np.testing.assert_allclose(out, 0.5, rtol=1e-6)
  out = value_loss.clipped_value_loss(v, v, v, jnp.zeros_like(v))
  assert float(out) == 0.0


@pytest.mark.parametrize("kwargs, name", [
    (dict(old_values=jnp.zeros(2)), "old_values"),
    (dict(returns=jnp.zeros((3, 1))), "returns"),
    (dict(mask=jnp.ones(2)), "mask"),
    (dict(clip=0.0), "clip"),
])
def test_bad_input_names_the_argument(kwargs, name):
  args = dict(values=jnp.zeros(3), old_values=jnp.zeros(3), returns=jnp.zeros(3), mask=None,
              clip=0.2)
  args.update(kwargs)
  with pytest.raises(ValueError, match=name):
    value_loss.clipped_value_loss(**args)
