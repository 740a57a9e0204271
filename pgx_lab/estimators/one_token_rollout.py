r"""One-token rollout (OTR; Ming, Wu et al. 2025, arXiv 2509.26313): SFT data, on-policy tokens.

Every position t of a demonstration is a one-step episode in the state s_t = (x, y*_{<t})
(teacher forcing). K candidate tokens are drawn from the current policy at a sampling temperature
tau, each is rewarded against the demonstration's token y*_t, and the samples are trained on with
REINFORCE (Williams 1992):

    a_{t,k} ~ q_tau(. | s_t) = softmax(z_t / tau),        k = 1..K   (no gradient through sampling)
    r(a)    = 1 if a == y*_t else r_neg                   (r_neg < 1, usually a small negative)
    l_t     = -(1/K) sum_k r(a_{t,k}) log pi(a_{t,k} | s_t),      pi = softmax(z_t)  (temperature 1)
    loss    = sum_t mask_t l_t / max(sum_t mask_t, 1)             (token mean over the mask)

Equivalently, with c_t the number of hits, l_t = -(c_t/K) log pi(y*_t)
- (r_neg/K) sum_{k: a_{t,k} != y*_t} log pi(a_{t,k}); the second term pushes probability off the
wrong tokens the model actually proposes, which is what separates OTR from a weighted SFT.

Expected gradient (`expected_logit_gradient`). Sampling is at temperature tau while log pi is at
temperature 1, so the weights are q_tau, not pi:

    E[grad_z l_t] = -sum_a q_tau(a) r(a) grad_z log pi(a) = -(q_tau * r) + (sum_a q_tau(a) r(a)) pi,

using grad_z log pi(a) = e_a - pi. At tau = 1 this is the spec's
-pi(y*) grad log pi(y*) - r_neg sum_{a != y*} pi(a) grad log pi(a)
(../shared/specs/llm_post_training.md section 8 (b)); for tau != 1 the spec's pi-weighted form
is not the expectation, and the tests check the q_tau-weighted one against Monte Carlo.

Reading implemented (the paper's constants are unconfirmed: the abstract and two reviews confirm
the one-step episodes, K candidates from the current policy at a temperature, reward from matching
the ground-truth token and a second term penalising sampled wrong tokens; the exact equation,
r_neg, K, tau and the normalisation were not found with the search tool): the spec's reading
above, with 1/K inside a position, token mean over the mask across the batch, no baseline,
log pi at temperature 1 (the model being trained), and q_tau only for the sampling.
Defaults K = 8, tau = 1, r_neg = -0.1 are this library's choice.

`logits` may also be log-probabilities: softmax and log_softmax are invariant to a per-position
shift, so log_softmax(z) in place of z changes nothing.
"""

from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from pgx_lab import validation

Array = jax.Array


def _is_concrete_number(x: Any) -> bool:
  return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _check_hyper(num_samples: Any, tau: Any, r_neg: Any) -> None:
  if (not isinstance(num_samples, (int, np.integer)) or isinstance(num_samples, bool)
      or num_samples < 1):
    raise ValueError(f"`num_samples` (K) must be a positive int, got {num_samples!r}.")
  if _is_concrete_number(tau) and not (np.isfinite(tau) and tau > 0):
    raise ValueError(f"`tau` must be a finite number > 0, got {tau!r}.")
  if _is_concrete_number(r_neg) and not (np.isfinite(r_neg) and r_neg < 1):
    raise ValueError(f"`r_neg` must be a finite number < 1 (the reward of a hit is 1), "
                     f"got {r_neg!r}.")


def _check_inputs(logits: Any, targets: Any, mask: Any) -> None:
  validation.check_array("logits", logits, ndim=3, kind="float")
  validation.check_array("targets", targets, ndim=2, kind="int")
  validation.check_array("mask", mask, ndim=2, kind="number")
  validation.check_shape("targets", targets, logits.shape[:2], against="logits[..., 0]")
  validation.check_shape("mask", mask, logits.shape[:2], against="logits[..., 0]")
  if logits.shape[-1] < 2:
    raise ValueError(f"`logits` needs a vocabulary of at least 2 tokens, got shape "
                     f"{tuple(logits.shape)}.")
  if not isinstance(targets, jax.core.Tracer):
    t = np.asarray(targets)
    v = logits.shape[-1]
    if t.size and (t.min() < 0 or t.max() >= v):
      raise ValueError(f"`targets` must lie in [0, {v}), got values in [{t.min()}, {t.max()}].")


def _sanitize(logits: Array, mask: Array) -> Tuple[Array, Array]:
  """Zeros the logits at masked positions (they may be all -inf) and returns a float mask."""
  w = (mask > 0).astype(logits.dtype)
  return jnp.where(w[..., None] > 0, logits, 0.0), w


def sample_candidates(key: Array, logits: Array, num_samples: int, tau: Any = 1.0) -> Array:
  """K candidate tokens per position from softmax(logits / tau), [B, T, K] int32.

  Args:
    key: PRNG key.
    logits: [B, T, V] float logits (or log-probs); entries of -inf are never drawn. Positions
      whose entries are all -inf must be masked by the caller (`otr_loss` zeros them first).
    num_samples: K, a positive Python int.
    tau: the sampling temperature, > 0 (may be traced).

  The samples are `jax.random.categorical(key, logits[:, :, None, :] / tau, shape=(B, T, K))`.
  """
  z = jax.lax.stop_gradient(logits) / tau
  b, t, _ = logits.shape
  return jax.random.categorical(key, z[:, :, None, :], shape=(b, t, num_samples)).astype(
      jnp.int32)


def loss_from_candidates(logits: Array, targets: Array, mask: Array, candidates: Array,
                         r_neg: Any = -0.1) -> Tuple[Array, Dict[str, Array]]:
  """The OTR loss for given candidates (module docstring), deterministic.

  Args:
    logits: [B, T, V] float logits or log-probs of the model being trained (temperature 1).
    targets: [B, T] int ground-truth tokens y*_t.
    mask: [B, T] 1 on trained demonstration tokens, 0 on prompt / padding.
    candidates: [B, T, K] int sampled tokens (`sample_candidates`; treated as constants).
    r_neg: the reward of a candidate that is not y*_t, < 1 (may be traced).

  Returns:
    (loss, metrics): the scalar loss and a dict of masked token means: "hit_rate" (fraction of
    candidates equal to y*), "reward" (mean candidate reward), "target_prob" (pi(y*)), "nll"
    (-log pi(y*), the SFT loss of the same tokens), "candidate_logp" (mean log pi of candidates),
    and "num_tokens".
  """
  z, w = _sanitize(logits, mask)
  logp = jax.nn.log_softmax(z, axis=-1)
  cand_logp = jnp.take_along_axis(logp, candidates, axis=-1)            # [B, T, K]
  hit = (candidates == targets[..., None]).astype(logp.dtype)
  reward = hit + (1.0 - hit) * r_neg
  per_token = -jnp.mean(reward * cand_logp, axis=-1)                    # [B, T]
  n = jnp.maximum(jnp.sum(w), 1.0)

  def tmean(x):
    return jnp.sum(jax.lax.stop_gradient(x) * w) / n

  target_logp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  metrics = {
      "hit_rate": tmean(jnp.mean(hit, -1)),
      "reward": tmean(jnp.mean(reward, -1)),
      "target_prob": tmean(jnp.exp(target_logp)),
      "nll": tmean(-target_logp),
      "candidate_logp": tmean(jnp.mean(cand_logp, -1)),
      "num_tokens": jnp.sum(w),
  }
  return jnp.sum(per_token * w) / n, metrics


def otr_loss(logits: Array, targets: Array, mask: Array, key: Array, num_samples: int = 8,
             tau: Any = 1.0, r_neg: Any = -0.1) -> Tuple[Array, Dict[str, Array]]:
  """One-token-rollout loss: sample K candidates per position at temperature tau, then REINFORCE.

  Args:
    logits: [B, T, V] float logits (or log-probs) of the model at each demonstration position
      (teacher forcing); masked positions may hold -inf.
    targets: [B, T] int ground-truth tokens y*_t in [0, V).
    mask: [B, T] 1 (or True) on trained tokens.
    key: PRNG key of the candidate sampling.
    num_samples: K, candidates per position (a static Python int >= 1).
    tau: sampling temperature > 0 (log pi stays at temperature 1).
    r_neg: reward of a wrong candidate, < 1 (default -0.1; the paper's value is unconfirmed).

  Returns:
    (loss, metrics) as `loss_from_candidates`. Raises ValueError naming the argument on bad
    shapes, dtypes, targets out of range or invalid K / tau / r_neg.
  """
  _check_inputs(logits, targets, mask)
  _check_hyper(num_samples, tau, r_neg)
  z, _ = _sanitize(logits, mask)
  candidates = sample_candidates(key, z, int(num_samples), tau)
  return loss_from_candidates(logits, targets, mask, candidates, r_neg)


def expected_logit_gradient(logits: Array, targets: Array, mask: Array, tau: Any = 1.0,
                            r_neg: Any = -0.1) -> Array:
  """Closed form of E[d otr_loss / d logits] over the candidates, [B, T, V] (any K).

  Per position, -(q_tau * r) + (sum_a q_tau(a) r(a)) pi with q_tau = softmax(z / tau),
  pi = softmax(z), r = r_neg + (1 - r_neg) onehot(y*) (module docstring), times
  mask_t / max(sum mask, 1); zero at masked positions.

  Args:
    logits, targets, mask, tau, r_neg: as `otr_loss`.
  """
  _check_inputs(logits, targets, mask)
  _check_hyper(1, tau, r_neg)
  z, w = _sanitize(logits, mask)
  q = jax.nn.softmax(z / tau, axis=-1)
  pi = jax.nn.softmax(z, axis=-1)
  onehot = jax.nn.one_hot(targets, z.shape[-1], dtype=z.dtype)
  r = r_neg + (1.0 - r_neg) * onehot
  g = -(q * r) + jnp.sum(q * r, axis=-1, keepdims=True) * pi
  return g * (w / jnp.maximum(jnp.sum(w), 1.0))[..., None]


def expected_loss(logits: Array, targets: Array, mask: Array, tau: Any = 1.0,
                  r_neg: Any = -0.1) -> Array:
  """E[otr_loss] over the candidates: token mean of -sum_a q_tau(a) r(a) log pi(a) (scalar).

  Its gradient is NOT `expected_logit_gradient` (that one treats q_tau as a constant, as the
  sampled estimator does). Args as `otr_loss`.
  """
  _check_inputs(logits, targets, mask)
  _check_hyper(1, tau, r_neg)
  z, w = _sanitize(logits, mask)
  q = jax.nn.softmax(z / tau, axis=-1)
  logp = jax.nn.log_softmax(z, axis=-1)
  r = r_neg + (1.0 - r_neg) * jax.nn.one_hot(targets, z.shape[-1], dtype=z.dtype)
  per_token = -jnp.sum(jnp.where(q > 0, q * r * logp, 0.0), axis=-1)
  return jnp.sum(per_token * w) / jnp.maximum(jnp.sum(w), 1.0)
