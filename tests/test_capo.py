"""CAPO (pgx_lab.second_order.capo): closed forms against autodiff, the mask, the state, bad input."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab import types
from pgx_lab.second_order import capo

B, T, D, V = 2, 3, 4, 5
ETA = 0.3


def _head(seed=0):
  k = jax.random.split(jax.random.PRNGKey(seed), 5)
  hidden = jax.random.normal(k[0], (B, T, D))
  kernel = jax.random.normal(k[1], (D, V))
  bias = 0.5 * jax.random.normal(k[2], (V,))
  tokens = jax.random.randint(k[3], (B, T), 0, V)
  adv = jnp.array([1.5, -0.7])
  return hidden, kernel, bias, tokens, adv


def _topk_logp(kernel, bias, h, token, ids):
  """z_y [y in K] - logsumexp_K z: the log of the top-K-renormalised softmax of the taken token
  when it is a candidate (CAPO's e_t = 0 otherwise), as a function of the head."""
  z = (h @ kernel + bias)[ids]
  return jnp.sum(z * (ids == token)) - jax.nn.logsumexp(z)


def _as_head(rows, ids):
  """Scatters candidate rows [K, D+1] into (kernel [D, V], bias [V]) directions."""
  full = jnp.zeros((V, D + 1)).at[ids].set(rows)
  return full[:, :D].T, full[:, D]


@jax.jit
def _grad_head(kernel, bias, a, h, token, ids):
  """jax.grad of A log pi_K(y) w.r.t. (kernel, bias)."""
  return jax.grad(lambda w, c: a * _topk_logp(w, c, h, token, ids), argnums=(0, 1))(kernel, bias)


@pytest.mark.parametrize("k", [V, 3])
def test_head_grads_match_autodiff(k):
  hidden, kernel, bias, tokens, adv = _head()
  logits = hidden @ kernel + bias
  ids, p, e = capo.top_k_candidates(logits, tokens, k)
  g = capo.token_head_grads(capo.features(hidden, True), p, e, adv[:, None] * jnp.ones((B, T)))
  for b in range(B):
    for t in range(T):
      gw, gb = _grad_head(kernel, bias, adv[b], hidden[b, t], tokens[b, t], ids[b, t])
      want_w, want_b = _as_head(g[b, t], ids[b, t])
      np.testing.assert_allclose(want_w, gw, rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(want_b, gb, rtol=1e-5, atol=1e-6)
  if k < V:  # a taken token outside the top-K has e = 0 (its row still gets -A p h).
    assert np.all(np.asarray(e).sum(-1) <= 1)


def _state(seed=1):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return capo.HeadAdamState(0.1 * jax.random.normal(k1, (V, D + 1)),
                            0.05 * jax.random.uniform(k2, (V, D + 1)), jnp.array(3, jnp.int32))


@jax.jit
def _slope_curv(kernel, bias, dw, db, h, token, ids):
  """First and second derivative of the top-K log-prob along the head direction (dw, db)."""
  f = lambda eps: _topk_logp(kernel + eps * dw, bias + eps * db, h, token, ids)
  return jax.grad(f)(0.0), jax.grad(jax.grad(f))(0.0)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fisher_and_hessian_terms_match_direct_computation(optimizer):
  hidden, kernel, bias, tokens, adv = _head()
  cfg = capo.CapoConfig(top_k=3, optimizer=optimizer, tau_fisher=0.0, tau_hessian=0.0)
  state = _state()
  _, _, metrics = capo.capo_mask(hidden, kernel, bias, tokens, adv, jnp.ones((B, T)), state,
                                 ETA, cfg)
  terms = metrics["terms"]
  ids, p, e = capo.top_k_candidates(hidden @ kernel + bias, tokens, 3)
  h = capo.features(hidden, True)
  g = capo.token_head_grads(h, p, e, adv[:, None] * jnp.ones((B, T)))
  n = 4  # prospective step count
  for b in range(B):
    for t in range(T):
      gt = g[b, t]
      if optimizer == "sgd":
        d = gt
      else:  # Adam by hand, numpy.
        m = 0.9 * np.asarray(state.m)[ids[b, t]] + 0.1 * gt
        s = 0.999 * np.asarray(state.s)[ids[b, t]] + 0.001 * gt ** 2
        d = (m / (1 - 0.9 ** n)) / (np.sqrt(s / (1 - 0.999 ** n)) + 1e-8)
      dw, db = _as_head(jnp.asarray(d), ids[b, t])
      slope, curv = _slope_curv(kernel, bias, dw, db, hidden[b, t], tokens[b, t], ids[b, t])
      a = adv[b]
      np.testing.assert_allclose(terms["s"][b, t], slope, rtol=1e-4, atol=1e-6)
      np.testing.assert_allclose(terms["kl"][b, t], 0.5 * ETA ** 2 * slope ** 2, rtol=1e-4,
                                 atol=1e-7)
      np.testing.assert_allclose(terms["hessian"][b, t], a * (slope ** 2 + curv), rtol=1e-4,
                                 atol=1e-6)
      np.testing.assert_allclose(terms["delta_j"][b, t],
                                 ETA * a * slope + 0.5 * ETA ** 2 * a * (slope ** 2 + curv),
                                 rtol=1e-4, atol=1e-6)


def test_predicted_kl_matches_realised_change_for_small_eta():
  hidden, kernel, bias, tokens, adv = _head(3)
  cfg = capo.CapoConfig(top_k=V, optimizer="sgd")
  eta = 1e-3
  _, _, metrics = capo.capo_mask(hidden, kernel, bias, tokens, adv, jnp.ones((B, T)),
                                 capo.init_state(V, D + 1), eta, cfg)
  ids, p, e = capo.top_k_candidates(hidden @ kernel + bias, tokens, V)
  g = capo.token_head_grads(capo.features(hidden, True), p, e, adv[:, None] * jnp.ones((B, T)))
  def logp(w, c, b, t):  # float64 numpy, so the small change is not lost to rounding.
    z = np.asarray(hidden[b, t], np.float64) @ np.asarray(w, np.float64) + np.asarray(c, np.float64)
    return z[int(tokens[b, t])] - np.log(np.sum(np.exp(z)))

  for b, t in [(0, 0), (1, 2)]:
    dw, db = _as_head(g[b, t], ids[b, t])
    change = logp(kernel + eta * dw, bias + eta * db, b, t) - logp(kernel, bias, b, t)
    np.testing.assert_allclose(metrics["terms"]["kl"][b, t], 0.5 * change ** 2, rtol=1e-2)


def test_token_mask_hand_thresholds():
  kl = jnp.array([[0.5, 1.0, 2.0, 0.0]])
  dj = jnp.array([[0.1, -0.3, 0.0, -0.05]])
  sym = capo.CapoConfig(tau_fisher=1.0, tau_hessian=0.2)
  np.testing.assert_array_equal(capo.token_mask(kl, dj, sym), [[1, 0, 0, 1]])
  one_sided = sym._replace(symmetric=False)  # also drops a predicted decrease.
  np.testing.assert_array_equal(capo.token_mask(kl, dj, one_sided), [[1, 0, 0, 0]])
  no_fisher = sym._replace(tau_fisher=0.0)
  np.testing.assert_array_equal(capo.token_mask(kl, dj, no_fisher), [[1, 0, 1, 1]])
  off = sym._replace(tau_fisher=0.0, tau_hessian=0.0)
  np.testing.assert_array_equal(capo.token_mask(kl, dj, off), [[1, 1, 1, 1]])
  traced = jax.jit(lambda tf, th: capo.token_mask(kl, dj, sym._replace(tau_fisher=tf,
                                                                       tau_hessian=th)))
  np.testing.assert_array_equal(traced(1.0, 0.2), [[1, 0, 0, 1]])
  np.testing.assert_array_equal(traced(0.0, 0.2), [[1, 0, 1, 1]])


def test_sgd_mask_and_rejected_fraction_by_hand():
  # SGD, K = V: s_t = A |h~|^2 |v|^2 in closed form; tau_F between the two kinds of token.
  hidden, kernel, bias, tokens, adv = _head(5)
  h2 = np.sum(np.asarray(capo.features(hidden, True)) ** 2, -1)
  p = np.asarray(jax.nn.softmax(hidden @ kernel + bias))
  v = np.eye(V)[np.asarray(tokens)] - p
  s = np.asarray(adv)[:, None] * h2 * np.sum(v ** 2, -1)
  kl = 0.5 * ETA ** 2 * s ** 2
  tau = float(np.median(kl))
  mask = jnp.array([[1, 1, 1], [1, 1, 0]], jnp.float32)
  cfg = capo.CapoConfig(tau_fisher=tau, tau_hessian=0.0, optimizer="sgd", top_k=V)
  keep, _, metrics = capo.capo_mask(hidden, kernel, bias, tokens, adv, mask,
                                    capo.init_state(V, D + 1), ETA, cfg)
  want = (kl < tau) * np.asarray(mask)
  np.testing.assert_array_equal(keep, want)
  np.testing.assert_allclose(metrics["capo_rejected"], 1 - want.sum() / 5, rtol=1e-6)
  np.testing.assert_allclose(metrics["terms"]["s"], s, rtol=1e-4)


def test_update_state_is_a_mean_over_kept_occurrences():
  cfg = capo.CapoConfig()
  state = capo.HeadAdamState(jnp.ones((3, 1)), jnp.ones((3, 1)), jnp.array(0, jnp.int32))
  ids = jnp.array([[[0, 1], [0, 2], [1, 2]]])  # [1, 3 tokens, K = 2]
  coef = jnp.array([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
  h = jnp.full((1, 3, 1), 2.0)  # g = coef * h = 2, 4 | 6, 8 | 10, 12
  keep = jnp.array([[1.0, 1.0, 0.0]])
  new = capo.update_state(state, coef, h, ids, keep, cfg)
  mean = np.array([[4.0], [4.0], [8.0]])  # id 0: (2 + 6) / 2, id 1: 4 / 1, id 2: 8 / 1
  np.testing.assert_allclose(new.m, 0.9 + 0.1 * mean, rtol=1e-6)
  np.testing.assert_allclose(new.s, 0.999 + 0.001 * mean ** 2, rtol=1e-6)
  assert int(new.count) == 1
  untouched = capo.update_state(state, coef, h, ids, jnp.zeros((1, 3)), cfg)
  np.testing.assert_allclose(untouched.m, state.m)  # no kept token: no id moves.


def test_first_adam_step_is_the_raw_gradient():
  hidden, kernel, bias, tokens, adv = _head()
  off = dict(tau_fisher=0.0, tau_hessian=0.0)
  empty = capo.init_state(V, D + 1)
  a = capo.capo_mask(hidden, kernel, bias, tokens, adv, jnp.ones((B, T)), empty, ETA,
                     capo.CapoConfig(optimizer="adam", **off))[2]["terms"]
  b = capo.capo_mask(hidden, kernel, bias, tokens, adv, jnp.ones((B, T)), empty, ETA,
                     capo.CapoConfig(optimizer="sgd", **off))[2]["terms"]
  np.testing.assert_allclose(a["s"], b["s"], rtol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_full_network_option_equals_head_model_when_only_head_trained(optimizer):
  hidden, kernel, bias, tokens, adv = _head(7)
  cfg = capo.CapoConfig(top_k=V, optimizer=optimizer, tau_fisher=0.0, tau_hessian=0.0)
  state = _state(2)
  _, _, metrics = capo.capo_mask(hidden, kernel, bias, tokens, adv, jnp.ones((B, T)), state,
                                 ETA, cfg)

  def logp_fn(params):
    lp = jax.nn.log_softmax(hidden @ params["kernel"] + params["bias"])
    return jnp.take_along_axis(lp, tokens[..., None], -1)[..., 0]

  params = {"kernel": kernel, "bias": bias}
  pre = lambda g: g
  if optimizer == "adam":
    tree = lambda x: {"kernel": x[:, :D].T, "bias": x[:, D]}
    pre = capo.adam_preconditioner(tree(state.m), tree(state.s), state.count, cfg)
  full = jax.jit(lambda p: capo.full_network_terms(logp_fn, p, adv, ETA, pre))(params)
  for name in ("s", "kl", "hessian", "delta_j"):
    np.testing.assert_allclose(full[name], metrics["terms"][name], rtol=1e-4, atol=1e-6)


def test_full_network_curvature_matches_jax_hessian_on_an_mlp():
  k = jax.random.split(jax.random.PRNGKey(11), 4)
  x = jax.random.normal(k[0], (2, 2, 3))
  params = {"w1": jax.random.normal(k[1], (3, 4)), "w2": jax.random.normal(k[2], (4, 5))}
  tokens = jnp.array([[0, 3], [4, 1]])
  adv = jnp.array([[1.0, -2.0], [0.5, 0.0]])

  def logp_fn(p):
    lp = jax.nn.log_softmax(jnp.tanh(x @ p["w1"]) @ p["w2"])
    return jnp.take_along_axis(lp, tokens[..., None], -1)[..., 0]

  full = jax.jit(lambda p: capo.full_network_terms(logp_fn, p, adv, ETA))(params)
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  f = lambda z: logp_fn(unravel(z))
  jac = np.asarray(jax.jit(jax.jacrev(f))(flat))      # [2, 2, P]
  hess = np.asarray(jax.jit(jax.hessian(f))(flat))    # [2, 2, P, P]
  a = np.asarray(adv)
  d = a[..., None] * jac
  s = np.einsum("btp,btp->bt", jac, d)
  h = a * (s ** 2 + np.einsum("btp,btpq,btq->bt", d, hess, d))
  np.testing.assert_allclose(full["s"], s, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(full["hessian"], h, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(full["delta_j"], ETA * a * s + 0.5 * ETA ** 2 * h, rtol=1e-4,
                             atol=1e-5)


def test_loss_renormalisation_rules():
  # On-policy (r = 1), so d loss / d logp_it = -A_i m'_it / N_i with N_i the rule's denominator.
  logp = jnp.log(jnp.array([[0.5, 0.25, 0.8], [0.1, 0.2, 0.4], [0.3, 0.6, 0.9],
                            [0.7, 0.7, 0.7]]))
  batch = types.SequenceBatch(mask=jnp.ones((4, 3)), old_logp=logp,
                              rewards=jnp.array([1.0, 0.0, 1.0, 0.0]),
                              group_ids=jnp.array([0, 0, 1, 1], jnp.int32))
  keep = jnp.array([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]], jnp.float32)
  k = np.asarray(keep)
  for loss_type in ("grpo", "dr_grpo"):
    est = capo.with_mask(capo.capo_estimator(loss_type), keep)
    a = np.asarray(capo.capo_estimator(loss_type).advantage(batch))[:, None]
    if loss_type == "grpo":  # mean over all 4 sequences of per-sequence kept-token means
      want = -a * k / np.maximum(k.sum(1, keepdims=True), 1.0) / 4
    else:  # sum over kept tokens / (B * T_max)
      want = -a * k / 12
    grad = jax.grad(lambda lp: est(lp, batch)[0])(logp)
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-7)
    value = est(logp, batch)[0]
    np.testing.assert_allclose(value, np.sum(want), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(est(logp, batch)[1]["mask_fraction"], 6 / 12)


def test_mask_is_jittable_and_finite_on_all_masked_rows():
  hidden, kernel, bias, tokens, adv = _head()
  fn = jax.jit(lambda *a: capo.capo_mask(*a, capo.CapoConfig())[0::2])
  keep, metrics = fn(hidden, kernel, bias, tokens, adv, jnp.zeros((B, T)),
                     capo.init_state(V, D + 1), ETA)
  assert float(jnp.sum(keep)) == 0.0 and float(metrics["capo_rejected"]) == 0.0


def test_bad_input():
  hidden, kernel, bias, tokens, adv = _head()
  ok = dict(hidden=hidden, kernel=kernel, bias=bias, tokens=tokens, adv=adv,
            mask=jnp.ones((B, T)), state=capo.init_state(V, D + 1), eta=ETA)
  cases = [("hidden", hidden[0]), ("kernel", kernel.T), ("bias", bias[:2]),
           ("tokens", tokens.astype(jnp.float32)), ("adv", adv[:1]), ("mask", jnp.ones((B,))),
           ("state.m", capo.init_state(V, D))]
  for name, bad in cases:
    args = dict(ok, **{name.split(".")[0]: bad})
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
      capo.capo_mask(**args)
  for field, value in (("optimizer", "lion"), ("top_k", 0), ("b1", 1.0), ("tau_fisher", -1.0)):
    with pytest.raises(ValueError, match=f"config.{field}"):
      capo.capo_mask(**ok, config=capo.CapoConfig(**{field: value}))
  with pytest.raises(ValueError, match="with_bias"):
    capo.capo_mask(**dict(ok, bias=None))
  with pytest.raises(ValueError, match="loss_type"):
    capo.capo_estimator("ppo")
  with pytest.raises(ValueError, match="keep"):
    capo.with_mask(capo.capo_estimator(), jnp.ones((3, 2)))(
        jnp.zeros((2, 2)), types.SequenceBatch(mask=jnp.ones((2, 2)), old_logp=jnp.zeros((2, 2)),
                                               rewards=jnp.ones(2),
                                               group_ids=jnp.zeros(2, jnp.int32)))


def test_all_candidates_fast_path_equals_the_gather_path():
  # With K >= V, ids are 0..V-1 and the state rows are broadcast, not gathered; same numbers.
  hidden, kernel, bias, tokens, adv = _head(9)
  h = capo.features(hidden, True)
  ids, p, e = capo.top_k_candidates(hidden @ kernel + bias, tokens, V)
  coef = adv[:, None, None] * (e - p)
  state, cfg = _state(4), capo.CapoConfig()
  keep = jnp.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
  for full in (True, False):
    u = capo.logit_change(state, coef, h, ids, cfg, full)
    new = capo.update_state(state, coef, h, ids, keep, cfg, full)
    if full:
      u0, new0 = u, new
  np.testing.assert_allclose(u0, u, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new0.m, new.m, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(new0.s, new.s, rtol=1e-5, atol=1e-9)
