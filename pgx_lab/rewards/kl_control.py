"""KL-shaped per-token rewards and the adaptive KL controller of RLHF-PPO.

Per-token reward (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences",
sec. 2.2; TRL `PPOTrainer.compute_rewards`; Text2Grad's `compute_rewards`, spec
llm_post_training.md section 11):

    r_t = c_t - beta * k_t,

with c_t the critic's token score (Text2Grad: dense span scores, no extra terminal scalar; the
scalar-reward baseline puts the score at the last valid token instead) and k_t a per-token KL
estimate between the rollout policy and the reference: TRL's `kl_penalty="kl"` is
k_t = log pi_old(y_t) - log pi_ref(y_t) (`penalties.kl_estimate(..., "k1")`), `"full"` is the
full-vocabulary KL(pi_old(.|s_t) || pi_ref(.|s_t)) (`full_kl` here).

Adaptive controller (Ziegler et al. 2019, sec. 2.2, eq. 2; TRL `AdaptiveKLController`):

    e = clip(KL / target - 1, -0.2, 0.2),   beta <- beta * (1 + e * n_steps / horizon),

with KL the batch mean of each sequence's summed per-token KL and n_steps the number of sequences
in the batch (TRL passes its batch size). Defaults as Text2Grad's config: init 0.2, target 0.1,
horizon 10000. The controller is an optax-like pair of pure functions over a NamedTuple state.
"""

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from pgx_lab import validation

Array = jax.Array

PROPORTIONAL_CLIP = 0.2


class KLControlState(NamedTuple):
  """The controller's state: `beta`, the current KL coefficient (float32 scalar)."""
  beta: Array


class KLController(NamedTuple):
  """`init() -> KLControlState` and `update(state, current_kl, n_steps) -> KLControlState`."""
  init: Callable[[], KLControlState]
  update: Callable[[KLControlState, Array, Array], KLControlState]


def adaptive_kl_controller(init_kl_coef: float = 0.2, target: float = 0.1,
                           horizon: float = 10000.0) -> KLController:
  """The adaptive KL controller (Ziegler et al. 2019, eq. 2; TRL's AdaptiveKLController).

  Args:
    init_kl_coef: initial beta (> 0).
    target: the target KL per sequence (> 0).
    horizon: the horizon H (> 0); beta moves by at most a factor 1 +- 0.2 n_steps / H per update.

  Returns:
    KLController; `update(state, current_kl, n_steps)` takes the measured KL (scalar, the batch
    mean of summed per-sequence KL, see `mean_sequence_kl`) and the number of sequences it came
    from, and returns the new state. Jittable.
  """
  validation.check_positive("init_kl_coef", init_kl_coef)
  validation.check_positive("target", target)
  validation.check_positive("horizon", horizon)

  def init() -> KLControlState:
    return KLControlState(beta=jnp.asarray(init_kl_coef, jnp.float32))

  def update(state: KLControlState, current_kl, n_steps) -> KLControlState:
    kl = jnp.asarray(current_kl, jnp.float32)
    if kl.ndim != 0:
      raise ValueError(f"`current_kl` must be a scalar, got shape {kl.shape}.")
    err = jnp.clip(kl / target - 1.0, -PROPORTIONAL_CLIP, PROPORTIONAL_CLIP)
    mult = 1.0 + err * jnp.asarray(n_steps, jnp.float32) / horizon
    return KLControlState(beta=state.beta * mult)

  return KLController(init, update)


def fixed_kl_controller(kl_coef: float = 0.2) -> KLController:
  """A controller whose beta never changes (TRL's FixedKLController; `adap_kl_ctrl=False`)."""
  validation.check_positive("kl_coef", kl_coef, allow_zero=True)

  def init() -> KLControlState:
    return KLControlState(beta=jnp.asarray(kl_coef, jnp.float32))

  def update(state: KLControlState, current_kl, n_steps) -> KLControlState:
    del current_kl, n_steps
    return state

  return KLController(init, update)


def _check_pair(a_name, a, b_name, b, ndim):
  validation.check_array(a_name, a, ndim=ndim)
  validation.check_array(b_name, b, ndim=ndim)
  validation.check_shape(b_name, b, a.shape, against=a_name)


def full_kl(logp_all: Array, ref_logp_all: Array, mask: Optional[Array] = None) -> Array:
  """Full-vocabulary KL(pi || pi_ref) at every token, TRL's `kl_penalty="full"`; [B, T].

  k_t = sum_v pi(v | s_t) (log pi(v | s_t) - log pi_ref(v | s_t)); 0 at masked tokens. Entries
  where pi(v) = 0 contribute 0 (also when pi_ref(v) = 0 there).

  Args:
    logp_all: [B, T, V] log-probabilities of the rollout policy.
    ref_logp_all: [B, T, V] log-probabilities of the reference.
    mask: [B, T] 0/1 valid tokens; None means all valid.
  """
  _check_pair("logp_all", logp_all, "ref_logp_all", ref_logp_all, 3)
  p = jnp.exp(logp_all)
  diff = jnp.where(p > 0, logp_all - ref_logp_all, 0.0)
  k = jnp.sum(p * diff, axis=-1)
  if mask is not None:
    validation.check_array("mask", mask, ndim=2, kind="number")
    validation.check_shape("mask", mask, logp_all.shape[:2], against="logp_all[..., 0]")
    k = jnp.where(mask > 0, k, 0.0)
  return k


def kl_shaped_rewards(token_scores: Array, kl: Array, beta, mask: Optional[Array] = None) -> Array:
  """Per-token rewards r_t = c_t - beta * k_t (Ziegler et al. 2019; Text2Grad `compute_rewards`).

  Args:
    token_scores: [B, T] critic scores c_t (for a scalar reward: the score at the last token).
    kl: [B, T] per-token KL estimates k_t (e.g. `penalties.kl_estimate(old, ref, mask, "k1")`
      or `full_kl`).
    beta: scalar KL coefficient (a controller state's `beta`).
    mask: [B, T] 0/1 valid tokens; None means all valid. Masked tokens get reward 0.

  Returns:
    [B, T] rewards.
  """
  _check_pair("token_scores", token_scores, "kl", kl, 2)
  b = jnp.asarray(beta)
  if b.ndim != 0:
    raise ValueError(f"`beta` must be a scalar, got shape {b.shape}.")
  r = token_scores - b * kl
  if mask is not None:
    validation.check_array("mask", mask, ndim=2, kind="number")
    validation.check_shape("mask", mask, token_scores.shape, against="token_scores")
    r = jnp.where(mask > 0, r, 0.0)
  return r


def terminal_scores(scores: Array, mask: Array) -> Array:
  """A sequence score placed on the last valid token, TRL's scalar-reward layout; [B, T].

  Args:
    scores: [B] sequence scores.
    mask: [B, T] 0/1 valid tokens (a row with no valid token gets no score).
  """
  validation.check_array("scores", scores, ndim=1)
  validation.check_array("mask", mask, ndim=2, kind="number")
  validation.check_shape("mask", mask, scores.shape + mask.shape[1:], against="scores")
  valid = mask > 0
  t = mask.shape[1]
  last = t - 1 - jnp.argmax(valid[:, ::-1], axis=1)
  at_last = (jnp.arange(t)[None, :] == last[:, None]) & valid
  return jnp.where(at_last, scores[:, None], 0.0).astype(scores.dtype)


def mean_sequence_kl(kl: Array, mask: Optional[Array] = None) -> Array:
  """The controller's input: mean over rows of each row's summed per-token KL (TRL objective/kl).

  Args:
    kl: [B, T] per-token KL estimates.
    mask: [B, T] 0/1 valid tokens; None means all valid.

  Returns:
    scalar.
  """
  validation.check_array("kl", kl, ndim=2)
  if mask is not None:
    validation.check_array("mask", mask, ndim=2, kind="number")
    validation.check_shape("mask", mask, kl.shape, against="kl")
    kl = jnp.where(mask > 0, kl, 0.0)
  return jnp.mean(jnp.sum(kl, axis=1)) if kl.shape[0] else jnp.zeros((), kl.dtype)
