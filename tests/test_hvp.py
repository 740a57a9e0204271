"""Hessian-vector products (pgx_lab.second_order.hvp) against jax.hessian on an MLP-like loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from pgx_lab.second_order import hvp as hvp_lib


def _mlp_loss(params, x, y):
  """A two-layer tanh network's squared error: x [N, 3], y [N]."""
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  pred = h @ params["w2"] + params["b2"]
  return jnp.mean((pred - y) ** 2) + 0.1 * jnp.sum(jnp.sin(params["w1"]))


def _params(key):
  k = jax.random.split(key, 4)
  return {"w1": jax.random.normal(k[0], (3, 4)), "b1": jax.random.normal(k[1], (4,)),
          "w2": jax.random.normal(k[2], (4,)), "b2": jax.random.normal(k[3], ())}


def test_hvp_matches_dense_hessian():
  key = jax.random.PRNGKey(0)
  params = _params(key)
  x = jax.random.normal(jax.random.PRNGKey(1), (7, 3))
  y = jax.random.normal(jax.random.PRNGKey(2), (7,))
  v = _params(jax.random.PRNGKey(3))
  flat, unravel = ravel_pytree(params)
  dense = jax.hessian(lambda f: _mlp_loss(unravel(f), x, y))(flat)        # [17, 17]
  expect = dense @ ravel_pytree(v)[0]
  got = ravel_pytree(hvp_lib.hvp(_mlp_loss, params, v, x, y))[0]
  np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-5)
  g, hv = jax.jit(lambda p, v: hvp_lib.grad_and_hvp(_mlp_loss, p, v, x, y))(params, v)
  np.testing.assert_allclose(ravel_pytree(hv)[0], expect, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ravel_pytree(g)[0],
                             ravel_pytree(jax.grad(_mlp_loss)(params, x, y))[0], rtol=1e-5)


def test_hvp_quadratic_closed_form_and_linearity():
  """L = 0.5 theta' A theta has H = A (sym. part): H v = A_sym v, linear in v."""
  a = np.random.default_rng(0).standard_normal((5, 5)).astype(np.float32)
  loss = lambda th: 0.5 * th @ a @ th
  th = jnp.ones(5)
  v1, v2 = jnp.arange(5.0), jnp.cos(jnp.arange(5.0))
  np.testing.assert_allclose(hvp_lib.hvp(loss, th, v1), 0.5 * (a + a.T) @ v1, rtol=1e-5, atol=1e-5)
  lhs = hvp_lib.hvp(loss, th, 2.0 * v1 - 3.0 * v2)
  rhs = 2.0 * hvp_lib.hvp(loss, th, v1) - 3.0 * hvp_lib.hvp(loss, th, v2)
  np.testing.assert_allclose(lhs, rhs, rtol=1e-5, atol=1e-4)


def test_hvp_vmaps_over_directions():
  params = _params(jax.random.PRNGKey(0))
  x, y = jnp.ones((2, 3)), jnp.zeros(2)
  flat, unravel = ravel_pytree(params)
  basis = jnp.eye(flat.size)
  column = lambda e: ravel_pytree(hvp_lib.hvp(_mlp_loss, params, unravel(e), x, y))[0]
  cols = jax.vmap(column)(basis)
  dense = jax.hessian(lambda f: _mlp_loss(unravel(f), x, y))(flat)
  np.testing.assert_allclose(cols, dense, rtol=1e-4, atol=1e-5)


def test_bad_input_names_argument():
  params = _params(jax.random.PRNGKey(0))
  x, y = jnp.ones((2, 3)), jnp.zeros(2)
  with pytest.raises(ValueError, match="`v`"):
    hvp_lib.hvp(_mlp_loss, params, {"w1": params["w1"]}, x, y)
  bad = dict(params, w2=jnp.ones(5))
  with pytest.raises(ValueError, match="`v`"):
    hvp_lib.hvp(_mlp_loss, params, bad, x, y)
  with pytest.raises(ValueError, match="`v`"):
    hvp_lib.hvp(_mlp_loss, params, jax.tree.map(lambda a: a.astype(jnp.int32), params), x, y)
  with pytest.raises(ValueError, match="`params`"):
    hvp_lib.hvp(lambda p: jnp.sum(p), jnp.arange(3), jnp.arange(3))


def test_tree_helpers():
  a = {"x": jnp.array([3.0, 0.0]), "y": jnp.array(4.0)}
  assert float(hvp_lib.tree_norm(a)) == pytest.approx(5.0)
  assert float(hvp_lib.tree_vdot(a, a)) == pytest.approx(25.0)


def test_second_order_benchmark_runs_and_writes_its_table(tmp_path):
  """benchmarks/second_order.py stays runnable (timings are not asserted; see BENCHMARKS.md)."""
  from benchmarks import second_order  # pylint: disable=import-outside-toplevel
  out = tmp_path / "so.json"
  second_order.main(["--models=mlp", "--repeats=1", "--min-sample-ms=1", f"--out={out}"])
  assert out.exists() and "| mlp |" in out.read_text()
