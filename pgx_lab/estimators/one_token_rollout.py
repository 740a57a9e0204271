r"""One-token rollout (OTR; Ming, Wu, Hu, He, Yu 2025, arXiv 2509.26313): SFT with sampled tokens.

Every position t of a demonstration is a one-step episode in the state s_t = (x, y*_{<t})
(teacher forcing). K candidate tokens are drawn from the current policy at a sampling temperature
tau, each is rewarded against the demonstration's token y*_t, and the samples are trained on with
REINFORCE (Williams 1992):

    a_{t,k} ~ q_tau(. | s_t) = softmax(z_t / tau), k = 1..K  (pi' of Eq. (6); not differentiated)
    r(a)    = 1 if a == y*_t else r_neg              (R of Eq. (4); r_neg = the paper's beta < 1)
    l_t     = -(1/K) sum_k sg[r(a_{t,k})] log pi(a_{t,k} | s_t),  pi = softmax(z_t)   (Eq. (8))

aggregated either as a token mean over the whole batch (`aggregate="token"`, this library's first
reading) or as the paper's per-sequence mean (`aggregate="sequence"`, the 1/T of Eq. (1) and
(4)): (1/T_b) sum_t l_t within each demonstration b (T_b its number of trained tokens), then the
mean over demonstrations.

Equivalently, with c_t the number of hits, l_t = -(c_t/K) log pi(y*_t)
- (r_neg/K) sum_{k: a_{t,k} != y*_t} log pi(a_{t,k}): there is no separate SFT term (the
ground-truth token is trained only when it is sampled), no baseline and no normalisation across the
K candidates; the second term pushes probability off the wrong tokens the model proposes.

Expected gradient (`expected_logit_gradient`). Sampling is at temperature tau while log pi is at
temperature 1, so the weights are q_tau, not pi:

    E[grad_z l_t] = -sum_a q_tau(a) r(a) grad_z log pi(a) = -(q_tau * r) + (sum_a q_tau(a) r(a)) pi,

using grad_z log pi(a) = e_a - pi (at tau = 1, -pi(y*) grad log pi(y*) - r_neg sum_{a != y*}
pi(a) grad log pi(a), spec llm_post_training.md section 8 (b)).

What the paper says, and where it was read (re-checked 2026-11-25). Of the paper itself
(arXiv 2509.26313v1, HTML, via the `search` tool, corpus "pages") only the abstract and the
opening of the introduction are stored; they say: each token generation is a single-step RL
trajectory; a Monte Carlo "rollout" samples multiple candidate tokens from the current policy's
distribution; the demonstration's ground-truth token gives the reward signal *to these samples*
(so y*_t is trained only when sampled, no separate SFT term); policy gradient. Summaries of the
full text agree and add: the policy-gradient theorem collapsed to length-one trajectories, a
sampling temperature (themoonlight.io), a second objective term penalising probability on sampled
incorrect tokens (liner.com). No official code was found (`find_repos`, code search). Equation
numbers and constants come only from the four public ICLR 2026 OpenReview reviews (a GitHub copy
found with `find_string "one-token rollout (OTR)"`), which quote:
  * Eq. (1): SFT normalised by the sequence length, (1/T) sum_t (reviewer 3 remarks on it);
  * Eq. (4): the OTR objective (1/T) sum_t E_{a ~ pi'}[R(a, x_t) grad log pi(a | s_t)] with
    R = 1 for the ground-truth token and beta < 1 otherwise (reviewers 1, 2, 4), whose exact
    expectation reviewer 2 writes as pi'(x_t) log pi(x_t) + beta sum_{a != x_t} pi'(a) log pi(a);
  * Eq. (6): pi', the temperature-scaled sampling policy ("a temperature greater than 1 is used
    to encourage exploration", reviewer 3); Eq. (8): the loss, with a stop-gradient on the reward;
  * K = 256 candidates per position (reviewers 2, 4); beta "slightly negative", an ablation shows
    a small negative beta helps (reviewer 4). No baseline is mentioned by any source.
Where the readings differ: reviewer 1 takes the expectation under pi itself (tau = 1) and finds
OTR's expected gradient to be (1 - beta) times DFT's, -(1 - beta) pi(y*) (e_{y*} - pi) per
position; that holds only at tau = 1 (at tau != 1 it is the q_tau form above, tested both ways);
reviewer 4 calls the reward "the fraction of the K tokens that match", which is the first term's
weight c_t/K; reviewer 3's tau > 1 is not this library's default. Still unknown: the values of
tau (> 1) and beta (< 0). `aggregate="sequence"` is the paper's normalisation, `"token"` the usual
token mean of LLM trainers. Defaults K = 8, tau = 1, r_neg = -0.1 are this library's.

Sampling (`sampler`): "gumbel" is `jax.random.categorical` (K x V random numbers a position);
"inverse_cdf" draws K uniforms per position and inverts the CDF of q_tau, the same distribution at
O(K + V) random numbers, which is what makes the paper's K = 256 affordable.

`logits` may also be log-probabilities: softmax and log_softmax are invariant to a per-position
shift, so log_softmax(z) in place of z changes nothing.
"""

from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from pgx_lab import validation

Array = jax.Array
AGGREGATES = ("token", "sequence")
SAMPLERS = ("gumbel", "inverse_cdf")


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


def position_weights(mask: Array, aggregate: str = "token") -> Array:
  """Weights [B, T] that turn per-position losses into the aggregated loss (sum of weight * loss).

  Args:
    mask: [B, T] 1 (or True / > 0) on trained tokens.
    aggregate: "token": mask / max(sum mask, 1), the token mean over the batch; "sequence" (the
      paper's Eq. (1) and (4)): mask_bt / max(T_b, 1) / max(#demonstrations with T_b > 0, 1),
      the per-demonstration token mean averaged over demonstrations. Rows with no trained token
      get weight 0 (never NaN); the weights sum to 1, or to 0 when nothing is trained.
  """
  validation.check_option("aggregate", aggregate, AGGREGATES)
  validation.check_array("mask", mask, ndim=2, kind="number")
  w = (mask > 0).astype(jnp.float32)
  if aggregate == "token":
    return w / jnp.maximum(jnp.sum(w), 1.0)
  per_row = jnp.sum(w, axis=1, keepdims=True)
  rows = jnp.sum((per_row > 0).astype(w.dtype))
  return w / jnp.maximum(per_row, 1.0) / jnp.maximum(rows, 1.0)


def sample_candidates(key: Array, logits: Array, num_samples: int, tau: Any = 1.0,
                      sampler: str = "gumbel") -> Array:
  """K candidate tokens per position from softmax(logits / tau), [B, T, K] int32.

  Args:
    key: PRNG key.
    logits: [B, T, V] float logits (or log-probs); entries of -inf are never drawn. Positions
      whose entries are all -inf must be masked by the caller (`otr_loss` zeros them first).
    num_samples: K, a positive Python int.
    tau: the sampling temperature, > 0 (may be traced).
    sampler: "gumbel": `jax.random.categorical(key, logits[:, :, None, :] / tau,
      shape=(B, T, K))`; "inverse_cdf": u = uniform(key, (B, T, K)) * C_V and the candidate is
      the first a with C_a > u, where C = cumsum(softmax(logits / tau)) (clipped to the last
      token of positive probability against rounding). Same distribution, other draws.
  """
  validation.check_option("sampler", sampler, SAMPLERS)
  z = jax.lax.stop_gradient(logits) / tau
  b, t, v = logits.shape
  if sampler == "gumbel":
    return jax.random.categorical(key, z[:, :, None, :], shape=(b, t, num_samples)).astype(
        jnp.int32)
  q = jax.nn.softmax(z, axis=-1)
  cdf = jnp.cumsum(q, axis=-1)                                           # [B, T, V]
  u = jax.random.uniform(key, (b, t, num_samples), dtype=cdf.dtype) * cdf[..., -1:]
  idx = jnp.sum((cdf[:, :, None, :] <= u[..., None]).astype(jnp.int32), axis=-1)
  last = v - 1 - jnp.argmax((q > 0)[..., ::-1], axis=-1)                  # [B, T]
  return jnp.minimum(idx, last[..., None]).astype(jnp.int32)


def loss_from_candidates(logits: Array, targets: Array, mask: Array, candidates: Array,
                         r_neg: Any = -0.1, aggregate: str = "token"
                         ) -> Tuple[Array, Dict[str, Array]]:
  """The OTR loss for given candidates (module docstring), deterministic.

  Args:
    logits: [B, T, V] float logits or log-probs of the model being trained (temperature 1).
    targets: [B, T] int ground-truth tokens y*_t.
    mask: [B, T] 1 on trained demonstration tokens, 0 on prompt / padding.
    candidates: [B, T, K] int sampled tokens (`sample_candidates`; treated as constants).
    r_neg: the reward of a candidate that is not y*_t, < 1 (may be traced).
    aggregate: "token" or "sequence" (`position_weights`).

  Returns:
    (loss, metrics): the scalar loss and a dict of masked token means over the batch (whatever
    `aggregate`): "hit_rate" (fraction of candidates equal to y*), "reward" (mean candidate
    reward), "target_prob" (pi(y*)), "nll" (-log pi(y*), the SFT loss of the same tokens),
    "candidate_logp" (mean log pi of candidates), and "num_tokens".
  """
  weights = position_weights(mask, aggregate)
  z, w = _sanitize(logits, mask)
  logp = jax.nn.log_softmax(z, axis=-1)
  cand_logp = jnp.take_along_axis(logp, candidates, axis=-1)            # [B, T, K]
  hit = (candidates == targets[..., None]).astype(logp.dtype)
  reward = jax.lax.stop_gradient(hit + (1.0 - hit) * r_neg)             # sg[r], Eq. (8)
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
  return jnp.sum(per_token * weights.astype(per_token.dtype)), metrics


def otr_loss(logits: Array, targets: Array, mask: Array, key: Array, num_samples: int = 8,
             tau: Any = 1.0, r_neg: Any = -0.1, aggregate: str = "token",
             sampler: str = "gumbel") -> Tuple[Array, Dict[str, Array]]:
  """One-token-rollout loss: sample K candidates per position at temperature tau, then REINFORCE.

  Args:
    logits: [B, T, V] float logits (or log-probs) of the model at each demonstration position
      (teacher forcing); masked positions may hold -inf.
    targets: [B, T] int ground-truth tokens y*_t in [0, V).
    mask: [B, T] 1 (or True) on trained tokens.
    key: PRNG key of the candidate sampling.
    num_samples: K, candidates per position (a static Python int >= 1; the paper uses 256).
    tau: sampling temperature > 0 (log pi stays at temperature 1; the paper's is > 1 per its
      reviews, value unknown).
    r_neg: reward of a wrong candidate (the paper's beta), < 1 (default -0.1; the paper's is
      "slightly negative", value unknown).
    aggregate: "token" (batch token mean) or "sequence" (the paper's per-demonstration mean).
    sampler: "gumbel" or "inverse_cdf" (`sample_candidates`).

  Returns:
    (loss, metrics) as `loss_from_candidates`. Raises ValueError naming the argument on bad
    shapes, dtypes, targets out of range or invalid K / tau / r_neg / aggregate / sampler.
  """
  _check_inputs(logits, targets, mask)
  _check_hyper(num_samples, tau, r_neg)
  validation.check_option("aggregate", aggregate, AGGREGATES)
  validation.check_option("sampler", sampler, SAMPLERS)
  z, _ = _sanitize(logits, mask)
  candidates = sample_candidates(key, z, int(num_samples), tau, sampler)
  return loss_from_candidates(logits, targets, mask, candidates, r_neg, aggregate)


def _expectation_terms(logits, targets, mask, tau, r_neg, aggregate):
  """Checked inputs of the closed forms: (position weights [B, T], sanitised logits z [B, T, V],
  q_tau = softmax(z / tau), rewards r = r_neg + (1 - r_neg) onehot(y*) [B, T, V])."""
  _check_inputs(logits, targets, mask)
  _check_hyper(1, tau, r_neg)
  weights = position_weights(mask, aggregate)
  z, _ = _sanitize(logits, mask)
  q = jax.nn.softmax(z / tau, axis=-1)
  r = r_neg + (1.0 - r_neg) * jax.nn.one_hot(targets, z.shape[-1], dtype=z.dtype)
  return weights, z, q, r


def expected_logit_gradient(logits: Array, targets: Array, mask: Array, tau: Any = 1.0,
                            r_neg: Any = -0.1, aggregate: str = "token") -> Array:
  """Closed form of E[d otr_loss / d logits] over the candidates, [B, T, V] (any K, any sampler).

  Per position, -(q_tau * r) + (sum_a q_tau(a) r(a)) pi with q_tau = softmax(z / tau),
  pi = softmax(z), r = r_neg + (1 - r_neg) onehot(y*) (module docstring), times the position's
  weight `position_weights(mask, aggregate)`; zero at masked positions.

  Args:
    logits, targets, mask, tau, r_neg, aggregate: as `otr_loss`.
  """
  weights, z, q, r = _expectation_terms(logits, targets, mask, tau, r_neg, aggregate)
  pi = jax.nn.softmax(z, axis=-1)
  g = -(q * r) + jnp.sum(q * r, axis=-1, keepdims=True) * pi
  return g * weights.astype(g.dtype)[..., None]


def expected_loss(logits: Array, targets: Array, mask: Array, tau: Any = 1.0,
                  r_neg: Any = -0.1, aggregate: str = "token") -> Array:
  """E[otr_loss] over the candidates: aggregate of -sum_a q_tau(a) r(a) log pi(a) (scalar).

  Reviewer 2's closed form of the paper's Eq. (4). Its gradient is NOT `expected_logit_gradient`
  (that one treats q_tau as a constant, as the sampled estimator does). Args as `otr_loss`.
  """
  weights, z, q, r = _expectation_terms(logits, targets, mask, tau, r_neg, aggregate)
  logp = jax.nn.log_softmax(z, axis=-1)
  per_token = -jnp.sum(jnp.where(q > 0, q * r * logp, 0.0), axis=-1)
  return jnp.sum(per_token * weights.astype(per_token.dtype))
