"""CAPO: a curvature-aware token mask (Melo, Abate & Gal 2025, arXiv 2510.00819, ICLR 2026).

Follows the authors' code (luckeciano/stable-pg-llm, src/open_r1/grpo_entropy_trainer.py and
sparse_optim_models/sparse_adam_model.py; spec llm_post_training.md sec. 7). Before an optimizer
step, a model of that step restricted to the LM head predicts, for each response token alone:
  candidates  K_t = the top-K logits' ids, p_t = softmax over those K only, e_t = one-hot of the
              taken token inside K_t (0 if absent), v_t = e_t - p_t;
  gradient    g_t[k] = A_i v_t[k] h_t (ascent on A log pi(y_t) w.r.t. the head rows of K_t);
  direction   d_t = g_t ("sgd") or the prospective Adam step of a predictive Adam replica with one
              (m_r, s_r) pair per vocabulary id ("adam"; d_t = g_t while its state is empty);
  shifts      u_t[k] = d_t[k].h_t, s_t = v_t.u_t, KL_t = 0.5 eta^2 s_t^2 (empirical Fisher),
              H_t = A_i (s_t^2 - u_t^T (diag p_t - p_t p_t^T) u_t),
              DeltaJ_t = eta A_i s_t + 0.5 eta^2 H_t;
  mask        keep_t = [KL_t < tau_F] and [-tau_H < DeltaJ_t < tau_H] (symmetric, every recipe;
              else 0 <= DeltaJ_t < tau_H); a tau of 0 switches its test off.
The predictive Adam state is updated after masking with the per-id mean of g_t over the kept
(token, candidate) pairs (`update_state`). A head bias is handled as one more input feature
h~ = [h, 1] (`with_bias`), so the bias entries get their own Adam moments.

Differences from the released code: h_t is paired with the position that produced p_t (the code
uses the hidden state one position later, an off-by-one noted in the spec), and everything is float32.

`full_network_terms` measures s_t, KL_t, H_t and DeltaJ_t through a whole network: per-token
gradients, the same preconditioner on the full parameter pytree, and d_t^T (Hess log pi(y_t)) d_t by
a Hessian-vector product (forward-over-reverse). With only the head trained, K = V and the same
state, it equals the head model (tests/test_capo.py); on a deeper model it checks the head model.
"""

from typing import Any, Callable, Dict, NamedTuple, Tuple

import jax
import jax.numpy as jnp

from pgx_lab import validation
from pgx_lab.estimators import masks
from pgx_lab.estimators import presets
from pgx_lab.estimators.estimator import Estimator

Array = jax.Array
sg = jax.lax.stop_gradient
OPTIMIZERS = ("adam", "sgd")
LOSS_TYPES = ("grpo", "dr_grpo")


class CapoConfig(NamedTuple):
  """CAPO's options (hashable with float taus; the taus may also be traced scalars). Defaults: the
  GRPO recipe (tau_F 1e-4, tau_H 0.01).

  tau_fisher, tau_hessian: thresholds tau_F, tau_H (0 disables a test); symmetric: the two-sided
  Hessian test; top_k: candidates K (50 in the code; capped at V); optimizer: "adam" or "sgd"
  predictive model; b1, b2, eps: its Adam constants (HF defaults); with_bias: model the head bias.
  """
  tau_fisher: float = 1e-4
  tau_hessian: float = 0.01
  symmetric: bool = True
  top_k: int = 50
  optimizer: str = "adam"
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  with_bias: bool = True


class HeadAdamState(NamedTuple):
  """The predictive Adam replica: m, s [V, D'] per vocabulary id (D' = D + 1 with a bias), count n."""
  m: Array
  s: Array
  count: Array


def check_config(config: CapoConfig) -> None:
  """Raises ValueError naming the bad field of `config`."""
  if not isinstance(config, CapoConfig):
    raise ValueError(f"`config` must be a CapoConfig, got {type(config).__name__}.")
  validation.check_option("config.optimizer", config.optimizer, OPTIMIZERS)
  for name in ("tau_fisher", "tau_hessian", "eps"):
    validation.check_positive(f"config.{name}", getattr(config, name), allow_zero=True)
  for name in ("b1", "b2"):
    if not 0.0 <= getattr(config, name) < 1.0:
      raise ValueError(f"`config.{name}` must be in [0, 1), got {getattr(config, name)!r}.")
  if not isinstance(config.top_k, int) or config.top_k < 1:
    raise ValueError(f"`config.top_k` must be a positive int, got {config.top_k!r}.")


def init_state(vocab_size: int, dim: int) -> HeadAdamState:
  """An empty predictive Adam state for V = `vocab_size` ids and D' = `dim` features."""
  return HeadAdamState(jnp.zeros((vocab_size, dim)), jnp.zeros((vocab_size, dim)),
                       jnp.zeros((), jnp.int32))


def features(hidden: Array, with_bias: bool) -> Array:
  """The head's input h~ [B, T, D'] = [h, 1] with a bias, else h."""
  if not with_bias:
    return hidden
  return jnp.concatenate([hidden, jnp.ones(hidden.shape[:-1] + (1,), hidden.dtype)], axis=-1)


def top_k_candidates(logits: Array, tokens: Array, k: int) -> Tuple[Array, Array, Array]:
  """ids [B, T, K] of the top-K logits, p [B, T, K] softmax over them, e [B, T, K] taken one-hot.
  With k >= V every id is a candidate: ids = 0..V-1 in vocabulary order (no sort)."""
  v = logits.shape[-1]
  if k >= v:
    ids = jnp.broadcast_to(jnp.arange(v), logits.shape)
    return ids, jax.nn.softmax(logits, axis=-1), jax.nn.one_hot(tokens, v, dtype=logits.dtype)
  vals, ids = jax.lax.top_k(logits, k)
  return ids, jax.nn.softmax(vals, axis=-1), (ids == tokens[..., None]).astype(logits.dtype)


def token_head_grads(h: Array, p: Array, e: Array, adv: Array) -> Array:
  """g [B, T, K, D'] = A v_t[k] h_t: grad of A log pi(y_t) w.r.t. the K candidate head rows.
  (`capo_mask` never materialises it: g = coef x h with coef = A v_t.)"""
  return (adv[..., None] * (e - p))[..., None] * h[..., None, :]


def _rows(x: Array, ids: Array, full: bool) -> Array:
  """x[ids] [B, T, K, D'], a broadcast instead of a gather when every id is a candidate in order."""
  return x[None, None] if full else x[ids]


def precondition(state: HeadAdamState, g: Array, ids: Array, config: CapoConfig,
                 full: bool = False) -> Array:
  """The step d [B, T, K, D'] each token alone would cause: g ("sgd") or the prospective Adam step
  (m' = b1 m + (1 - b1) g, s' = b2 s + (1 - b2) g^2, bias-corrected at n + 1; d = g while n = 0).
  `full`: ids are 0..V-1 in order (top_k_candidates with k >= V)."""
  if config.optimizer == "sgd":
    return g
  b1, b2, n = config.b1, config.b2, state.count + 1
  m = b1 * _rows(state.m, ids, full) + (1 - b1) * g
  s = b2 * _rows(state.s, ids, full) + (1 - b2) * g * g
  d = (m / (1 - b1 ** n)) / (jnp.sqrt(s / (1 - b2 ** n)) + config.eps)
  return jnp.where(state.count == 0, g, d)


def logit_change(state: HeadAdamState, coef: Array, h: Array, ids: Array, config: CapoConfig,
                 full: bool = False) -> Array:
  """u_t[k] = d_t[k].h_t [B, T, K] for g = coef [B, T, K] x h [B, T, D']; with SGD in closed form
  u = coef |h|^2, else an elementwise pass and a reduction over D', run over chunks of at most 8
  sequences (`lax.map`): the [chunk, T, K, D'] intermediates stay in cache, where XLA (CPU) would
  otherwise write and re-read the whole [B, T, K, D'] tensors (1.8x the GRPO step instead of 1.1x
  on the benchmark's small transformer)."""
  if config.optimizer == "sgd":
    return coef * jnp.sum(h * h, -1)[..., None]
  def rows(args):
    c, x, i = args
    g = c[..., None] * x[..., None, :]
    return jnp.sum(precondition(state, g, i, config, full) * x[..., None, :], axis=-1)

  b = coef.shape[0]
  chunk = max(c for c in range(1, min(b, 8) + 1) if b % c == 0)
  split = lambda a: a.reshape((b // chunk, chunk) + a.shape[1:])
  u = jax.lax.map(rows, (split(coef), split(h), split(ids)))
  return u.reshape(coef.shape)


def curvature_terms(s: Array, u: Array, p: Array, adv: Array, eta) -> Dict[str, Array]:
  """KL_t, H_t and DeltaJ_t [B, T] (spec sec. 7) from s_t = v_t.u_t [B, T], the predicted logit
  change u_t [B, T, K], the candidate probabilities p_t [B, T, K], advantages [B, T] and eta."""
  ufu = jnp.sum(p * u * u, -1) - jnp.sum(p * u, -1) ** 2
  hess = adv * (s * s - ufu)
  return {"s": s, "kl": 0.5 * eta ** 2 * s * s, "hessian": hess,
          "delta_j": eta * adv * s + 0.5 * eta ** 2 * hess}


def token_mask(kl: Array, delta_j: Array, config: CapoConfig) -> Array:
  """keep [B, T] in {0, 1}: both tests at once on the unmasked batch (grpo_entropy_trainer.py).
  The taus may also be traced scalars (e.g. vmapped over runs); 0 still switches a test off."""
  tau_f, tau_h = config.tau_fisher, config.tau_hessian
  fisher = kl < tau_f
  low = delta_j > -tau_h if config.symmetric else delta_j >= 0.0
  hessian = low & (delta_j < tau_h)
  return ((fisher | (tau_f == 0)) & (hessian | (tau_h == 0))).astype(kl.dtype)


def update_state(state: HeadAdamState, coef: Array, h: Array, ids: Array, weight: Array,
                 config: CapoConfig, full: bool = False) -> HeadAdamState:
  """One predictive Adam update from the kept tokens, with g_t[k] = coef[b, t, k] h_t (`weight`
  [B, T], 1 = kept response token): per id r the mean of g_t[r] over kept (token, candidate) pairs
  with r in K_t; ids absent this step are left as they are; n += 1 (sparse_adam_model.py
  `update_effective_gradient_moments`). The sums are one [V, B*T] x [B*T, D'] product; `full`:
  ids are 0..V-1 in order, so no scatter is needed."""
  v, dim = state.m.shape
  n_tok = weight.size
  w = jnp.broadcast_to(weight[..., None], ids.shape).astype(coef.dtype)
  if full:
    sums = jnp.einsum("btr,btd->rd", coef * w, h)
    counts = jnp.full((v,), jnp.sum(weight), coef.dtype)
  else:
    rows = jnp.broadcast_to(jnp.arange(n_tok).reshape(weight.shape)[..., None], ids.shape)
    scatter = lambda x: jnp.zeros((n_tok, v), coef.dtype).at[
        rows.reshape(-1), ids.reshape(-1)].add(x.reshape(-1))
    sums = scatter(coef * w).T @ h.reshape(n_tok, dim)
    counts = jnp.sum(scatter(w), axis=0)
  mean = sums / jnp.maximum(counts, 1.0)[:, None]
  seen = (counts > 0)[:, None]
  m = jnp.where(seen, config.b1 * state.m + (1 - config.b1) * mean, state.m)
  s = jnp.where(seen, config.b2 * state.s + (1 - config.b2) * mean * mean, state.s)
  return HeadAdamState(m, s, state.count + 1)


def _check_inputs(hidden, kernel, bias, tokens, adv, mask, state, config):
  check_config(config)
  validation.check_array("hidden", hidden, ndim=3)
  b, t, dim = hidden.shape
  validation.check_array("kernel", kernel, ndim=2)
  if kernel.shape[0] != dim:
    raise ValueError(f"`kernel` must have shape ({dim}, V) (hidden's width), got {kernel.shape}.")
  if bias is not None:
    validation.check_array("bias", bias, ndim=1)
    validation.check_shape("bias", bias, kernel.shape[1:], against="kernel columns")
  elif config.with_bias:
    raise ValueError("`bias` is None but `config.with_bias` is True.")
  validation.check_array("tokens", tokens, ndim=2, kind="int")
  validation.check_shape("tokens", tokens, (b, t), against="hidden[:2]")
  validation.check_array("adv", adv, ndim=(1, 2))
  validation.check_shape("adv", adv, (b, t)[: adv.ndim], against="hidden")
  validation.check_array("mask", mask, ndim=2, kind="number")
  validation.check_shape("mask", mask, (b, t), against="hidden[:2]")
  if not isinstance(state, HeadAdamState):
    raise ValueError(f"`state` must be a HeadAdamState, got {type(state).__name__}.")
  want = (kernel.shape[1], dim + int(config.with_bias))
  validation.check_shape("state.m", state.m, want, against="(V, D + with_bias)")


def capo_mask(hidden: Array, kernel: Array, bias, tokens: Array, adv: Array, mask: Array,
              state: HeadAdamState, eta, config: CapoConfig = CapoConfig()):
  """CAPO's token mask and the next predictive state, from the LM head's input (no backprop).

  Args:
    hidden: [B, T, D] LM-head inputs h_t at the positions that predict `tokens`.
    kernel: [D, V] head weights; bias: [V] head bias or None (then `config.with_bias` is False).
    tokens: [B, T] int taken tokens; adv: [B] or [B, T] advantages; mask: [B, T] response mask.
    state: the predictive `HeadAdamState` (ignored by "sgd", but updated all the same).
    eta: the real optimizer's current learning rate (scalar, may be traced).
    config: `CapoConfig`.

  Returns:
    keep [B, T] (mask x CAPO's keep), the updated state, and metrics: "capo_rejected" (fraction
    of response tokens dropped), "capo_kl_mean", "capo_delta_j_abs_mean", plus the per-token terms
    under "terms" (s, kl, hessian, delta_j [B, T]).
  """
  _check_inputs(hidden, kernel, bias, tokens, adv, mask, state, config)
  hidden, kernel = sg(hidden), sg(kernel)
  logits = hidden @ kernel + (0.0 if bias is None else sg(bias))
  h = features(hidden, config.with_bias)
  adv = jnp.broadcast_to(adv[:, None] if adv.ndim == 1 else adv, tokens.shape).astype(h.dtype)
  full = config.top_k >= logits.shape[-1]
  ids, p, e = top_k_candidates(logits, tokens, config.top_k)
  coef = adv[..., None] * (e - p)
  u = logit_change(state, coef, h, ids, config, full)
  terms = curvature_terms(jnp.sum((e - p) * u, -1), u, p, adv, eta)
  response = mask.astype(h.dtype)
  keep = response * token_mask(terms["kl"], terms["delta_j"], config)
  n = jnp.maximum(jnp.sum(response), 1.0)
  metrics = {"capo_rejected": jnp.sum(response - keep) / n,
             "capo_kl_mean": jnp.sum(terms["kl"] * response) / n,
             "capo_delta_j_abs_mean": jnp.sum(jnp.abs(terms["delta_j"]) * response) / n,
             "terms": terms}
  return keep, update_state(state, coef, h, ids, keep, config, full), metrics


def precomputed_mask(keep: Array) -> Callable:
  """A mask part `mask(batch, adv) -> keep` returning a mask computed beforehand (e.g. capo_mask)."""
  validation.check_array("keep", keep, ndim=2, kind="number")

  def mask(batch, adv):
    del adv
    validation.check_shape("keep", keep, batch.mask.shape, against="batch.mask")
    return keep.astype(jnp.float32)

  return mask


def with_mask(estimator: Estimator, keep: Array) -> Estimator:
  """`estimator` with `keep` [B, T] ANDed into its mask part (call inside the jitted loss)."""
  return estimator.replace(mask=masks.all_of(estimator.mask, precomputed_mask(keep)))


def capo_estimator(loss_type: str = "grpo", **grpo_kwargs) -> Estimator:
  """The base loss of CAPO (spec sec. 7, "Loss after masking"): "grpo" renormalises each sequence
  by its kept tokens, mean_i sum_t m'_t l_t / max(1, sum_t m'_t) (a fully masked sequence gives 0
  and still counts); "dr_grpo" is sum_t m'_t l_t / (B * T_max): masked tokens simply drop out (pass
  the paper's constant as `batch.loss_normalizer`). Add the mask with `with_mask`."""
  validation.check_option("loss_type", loss_type, LOSS_TYPES)
  return presets.grpo(loss_type, **grpo_kwargs).replace(name=f"capo_{loss_type}")


def _hvp(f, params, v):
  return jax.jvp(jax.grad(f), (params,), (v,))[1]


def full_network_terms(logp_fn: Callable[[Any], Array], params: Any, adv: Array, eta,
                       precondition_fn: Callable[[Any], Any] = lambda g: g) -> Dict[str, Array]:
  """s_t, KL_t, H_t, DeltaJ_t [B, T] through the whole network (small policies: cost B*T HVPs).

  Args:
    logp_fn: params -> [B, T] log pi(y_t) of the taken tokens (the network's full softmax).
    params: the (trained) parameter pytree.
    adv: [B] or [B, T] advantages.
    eta: learning rate.
    precondition_fn: maps one token's ascent gradient pytree A grad log pi(y_t) to its step d_t
      (identity = SGD; `adam_preconditioner` for a full-parameter predictive Adam).

  Returns:
    dict s (grad log pi . d), kl (0.5 eta^2 s^2), hessian (A (s^2 + d^T Hess log pi(y_t) d), by HVP)
    and delta_j (eta A s + 0.5 eta^2 H).
  """
  logp0 = logp_fn(params)
  validation.check_array("logp_fn(params)", logp0, ndim=2)
  validation.check_array("adv", adv, ndim=(1, 2))
  validation.check_shape("adv", adv, logp0.shape[: adv.ndim], against="logp_fn(params)")
  adv = jnp.broadcast_to(adv[:, None] if adv.ndim == 1 else adv, logp0.shape).reshape(-1)
  jac = jax.jacrev(lambda p: logp_fn(p).reshape(-1))(params)

  def one(i, a):
    grad = jax.tree_util.tree_map(lambda x: x[i], jac)
    d = precondition_fn(jax.tree_util.tree_map(lambda x: a * x, grad))
    dot = lambda x, y: sum(jnp.vdot(p, q) for p, q in zip(jax.tree_util.tree_leaves(x),
                                                          jax.tree_util.tree_leaves(y)))
    curv = dot(d, _hvp(lambda p: logp_fn(p).reshape(-1)[i], params, d))
    s = dot(grad, d)
    hess = a * (s * s + curv)
    return jnp.stack([s, 0.5 * eta ** 2 * s * s, hess, eta * a * s + 0.5 * eta ** 2 * hess])

  out = jax.vmap(one)(jnp.arange(adv.shape[0]), adv).reshape(logp0.shape + (4,))
  return {k: out[..., j] for j, k in enumerate(("s", "kl", "hessian", "delta_j"))}


def adam_preconditioner(m: Any, s: Any, count, config: CapoConfig = CapoConfig()) -> Callable:
  """The prospective Adam step on a full parameter pytree with predictive moments m, s (ascent
  sign) and step count `count`: the same rule as `precondition`, leaf by leaf."""
  def fn(g):
    n, b1, b2 = count + 1, config.b1, config.b2
    def leaf(gl, ml, sl):
      d = ((b1 * ml + (1 - b1) * gl) / (1 - b1 ** n)) / (
          jnp.sqrt((b2 * sl + (1 - b2) * gl * gl) / (1 - b2 ** n)) + config.eps)
      return jnp.where(count == 0, gl, d)
    return jax.tree_util.tree_map(leaf, g, m, s)
  return fn
