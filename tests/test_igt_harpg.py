"""N-PG-IGT and (N)-HARPG transforms: hand-stepped updates, schedules, chain, jit, vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pgx_lab.second_order import harpg as harpg_lib
from pgx_lab.second_order import igt

THETA0 = np.array([1.0, -2.0])


def _unit(x):
  return x / np.linalg.norm(x)


def test_harpg_two_steps_by_hand():
  """t=0: d0 = g0; t=1: q fixed, hvp_fn(point, v) = point * v (so the point matters)."""
  g0, g1, q, gamma_0 = np.array([3.0, 4.0]), np.array([1.0, -1.0]), 0.25, 0.5
  for normalize in (True, False):
    tx = harpg_lib.harpg(gamma_0, normalize=normalize)
    hvp_fn = lambda point, v: point * v
    th0 = jnp.asarray(THETA0, jnp.float32)
    state = tx.init(th0)
    u0, state = tx.update(jnp.asarray(g0, jnp.float32), state, th0, hvp_fn=hvp_fn)
    step0 = gamma_0 * 1.0                                 # gamma_0 * (2 / 2)^power
    th1 = THETA0 - step0 * (_unit(g0) if normalize else g0)
    np.testing.assert_allclose(th0 + u0, th1, rtol=1e-6)
    u1, state = tx.update(jnp.asarray(g1, jnp.float32), state, jnp.asarray(th1, jnp.float32),
                          hvp_fn=hvp_fn, interpolation=q)
    hat = q * th1 + (1 - q) * THETA0
    hv = hat * (th1 - THETA0)
    eta1 = 2.0 / 3.0
    d1 = (1 - eta1) * (g0 + hv) + eta1 * g1
    step1 = gamma_0 * (2.0 / 3.0) ** (1.0 if normalize else 0.5)
    th2 = th1 - step1 * (_unit(d1) if normalize else d1)
    np.testing.assert_allclose(th1 + u1, th2, rtol=1e-5)
    np.testing.assert_allclose(state.d, d1, rtol=1e-5)
    np.testing.assert_allclose(state.prev_params, th1, rtol=1e-6)
    assert int(state.count) == 2


def test_igt_two_steps_by_hand_both_paths():
  """grad(p) = 2 p + (1, 0); the second gradient is taken at the extrapolated point."""
  gamma_0 = 0.5
  grad = lambda p: 2.0 * p + jnp.array([1.0, 0.0])
  tx = igt.npg_igt(gamma_0)
  th0 = jnp.asarray(THETA0, jnp.float32)
  s = tx.init(th0)
  u0, s = tx.update(None, s, th0, grad_fn=grad)
  d0 = 2 * THETA0 + [1.0, 0.0]                  # eta_0 = 1: query point = theta_0, d_0 = g
  th1 = THETA0 - gamma_0 * _unit(d0)
  np.testing.assert_allclose(th0 + u0, th1, rtol=1e-6)
  eta1 = (2.0 / 3.0) ** 0.8
  tilde = th1 + (1 - eta1) / eta1 * (th1 - THETA0)
  d1 = (1 - eta1) * d0 + eta1 * (2 * tilde + [1.0, 0.0])
  th2 = th1 - gamma_0 * (2.0 / 3.0) * _unit(d1)
  th1j = jnp.asarray(th1, jnp.float32)
  np.testing.assert_allclose(igt.query_point(s, th1j), tilde, rtol=1e-5)
  u1, s1 = tx.update(None, s, th1j, grad_fn=grad)
  np.testing.assert_allclose(th1 + u1, th2, rtol=1e-5)
  # The caller-samples path: gradient at query_point passed as `updates`.
  u1b, _ = tx.update(grad(igt.query_point(s, th1j)), s, th1j)
  np.testing.assert_allclose(u1b, u1, rtol=1e-6)
  # Unnormalised: same gamma_t (authors' code), d not normalised.
  txu = igt.npg_igt(gamma_0, normalize=False)
  su = txu.init(th0)
  u0u, su = txu.update(None, su, th0, grad_fn=grad)
  np.testing.assert_allclose(u0u, -gamma_0 * d0, rtol=1e-6)


def test_schedules_match_authors_code():
  t = jnp.arange(4)
  np.testing.assert_allclose(igt.igt_momentum(t), (2.0 / (np.arange(4) + 2)) ** 0.8, rtol=1e-6)
  np.testing.assert_allclose(harpg_lib.harpg_momentum(t, 0.5), 0.5 * 2 / (np.arange(4) + 2))
  np.testing.assert_allclose(igt.decaying_step(t, 0.1, 0.5), 0.1 * np.sqrt(2 / (np.arange(4) + 2)),
                             rtol=1e-6)


def test_chain_jit_and_custom_schedule():
  """chain(harpg, scale(0.5)) halves each step; jit gives the same as eager; callables work."""
  th = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(0.5)}
  gs = [jax.tree.map(lambda x: x * (i + 1.0), th) for i in range(3)]
  hvp_fn = lambda p, v: jax.tree.map(lambda a, b: 0.3 * b, p, v)
  plain = harpg_lib.harpg(0.1, key=3)
  chained = optax.chain(harpg_lib.harpg(0.1, key=3), optax.scale(0.5))
  sp, sc = plain.init(th), chained.init(th)
  step = jax.jit(lambda g, s, p: chained.update(g, s, p, hvp_fn=hvp_fn))
  p = th
  for g in gs:
    up, sp = plain.update(g, sp, p, hvp_fn=hvp_fn)
    uc, sc = step(g, sc, p)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, 0.5 * a, rtol=1e-5), up, uc)
    p = optax.apply_updates(p, up)
  const = igt.npg_igt(lambda c: 0.2, momentum=lambda c: 0.5 + 0.0 * c)
  s = const.init(th)
  u, s = jax.jit(lambda s, p: const.update(None, s, p, grad_fn=lambda q: q))(s, th)
  norm = jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(th)))
  jax.tree.map(lambda a, x: np.testing.assert_allclose(a, -0.2 * 0.5 * x / (0.5 * norm), rtol=1e-5),
               u, th)


def test_nharpg_converges_on_quadratic_with_noise_and_vmaps_over_keys():
  """L = 0.5 (theta - c)' A (theta - c); noisy gradients, exact HVP; vmapped over 4 keys."""
  a = jnp.array([[2.0, 0.3], [0.3, 0.5]])
  c = jnp.array([1.0, -1.0])
  tx = harpg_lib.harpg(1.0)

  def run(key):
    th = jnp.zeros(2)
    s = tx.init(th)._replace(key=key)

    def body(carry, k):
      th, s = carry
      g = a @ (th - c) + 0.05 * jax.random.normal(k, (2,))
      u, s = tx.update(g, s, th, hvp_fn=lambda p, v: a @ v)
      return (th + u, s), None

    (th, s), _ = jax.lax.scan(body, (th, s), jax.random.split(key, 300))
    return th, s.key

  ths, keys = jax.jit(jax.vmap(run))(jax.random.split(jax.random.PRNGKey(0), 4))
  assert np.max(np.linalg.norm(np.asarray(ths) - np.asarray(c), axis=-1)) < 0.1
  assert len({tuple(np.asarray(k)) for k in keys}) == 4       # the state keys stay distinct


def test_bad_input_names_argument():
  with pytest.raises(ValueError, match="`learning_rate`"):
    igt.npg_igt(-1.0)
  with pytest.raises(ValueError, match="`momentum`"):
    harpg_lib.harpg(0.1, momentum="x")
  with pytest.raises(ValueError, match="`eps`"):
    harpg_lib.harpg(0.1, eps=0.0)
  tx = harpg_lib.harpg(0.1)
  th = jnp.zeros(3)
  s = tx.init(th)
  with pytest.raises(ValueError, match="`hvp_fn`"):
    tx.update(th, s, th)
  with pytest.raises(ValueError, match="`updates`"):
    tx.update(jnp.zeros(2), s, th, hvp_fn=lambda p, v: v)
  with pytest.raises(ValueError, match="`params`"):
    tx.update(th, s, None, hvp_fn=lambda p, v: v)
  t2 = igt.npg_igt(0.1)
  with pytest.raises(ValueError, match="`updates`"):
    t2.update(None, t2.init(th), th)
