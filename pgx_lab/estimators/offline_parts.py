"""Reference and penalty parts of offline policy gradients on a fixed dataset (A-LoL, R-LoL, GOLD).

Baheti et al., ICLR 2024, "Leftover Lunch: Advantage-based Offline Reinforcement Learning for
Language Models" (A-LoL) treat a whole response y as one action and estimate the A-LoL gradient
(the equation of the code's README, `images/A_LoL_eq.png`; the paper's section and equation
numbers were not checked, so none are cited here)

    grad J = E_{(x, y) ~ D_tr}[ A_ref(x, y) (pi_theta(y|x) / pi_ref(y|x)) grad log pi_theta(y|x) ]

with the importance weight clamped to [1 - eps, 1 + eps] and detached (the clamp only rescales the
NLL gradient; it is not PPO's min). Each part here has the reference-part signature of `Estimator`
(`part(logp, batch, adv, mask) -> (per_token_loss [B, T], metrics)`, `adv` and `mask` [B, T], a
sequence advantage broadcast over its tokens) or the penalty signature
(`penalty(logp, batch, mask, entropy) -> (per_token [B, T], metrics)`). Summed over tokens
(`aggregation.seq_mean_token_sum`) they give the losses of the authors' code
(abaheti95/LoL-RL, `lolrl_qlora_llama_hh.py`, branches `a_lol`, `a_lol_seq`, `r_lol`, `r_gold`).

The estimator zeroes `logp` and `batch.ref_logp` at masked positions before calling a part, so a
-inf reference log-prob at padding is harmless.
"""

import jax
import jax.numpy as jnp

from pgx_lab import validation

sg = jax.lax.stop_gradient

# A summed log-ratio beyond +-20 gives a weight outside [1 - eps, 1 + eps] for every eps <= 1, so
# clamping it there first changes no value and keeps exp() finite.
_LOG_RATIO_CLAMP = 20.0


def _check_eps(eps):
  validation.check_positive("eps", eps)
  if isinstance(eps, (int, float)) and eps > 1.0:
    raise ValueError(f"`eps` must be in (0, 1] so that the clamp [1 - eps, 1 + eps] is "
                     f"non-negative, got {eps!r}.")


def _ref_logp(batch, who):
  return validation.require("batch.ref_logp", batch.ref_logp, who)


def _masked_mean(x, mask):
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _weight_metrics(raw, clamped, mask):
  """ratio_mean / ratio_max of the unclamped weight, clip_fraction: share where the clamp binds."""
  hit = (raw != clamped).astype(raw.dtype)
  top = jnp.where(jnp.sum(mask) > 0, jnp.max(jnp.where(mask > 0, raw, -jnp.inf)), 1.0)
  return {"ratio_mean": sg(_masked_mean(raw, mask)), "ratio_max": sg(top),
          "clip_fraction": sg(_masked_mean(hit, mask))}


def _advantage(adv, positive):
  """A^+ = max(A, 0) when `positive` (A-LoL clamps the advantage, code line `torch.clamp(advantage,
  min=0.0)`), else A unchanged (R-LoL's reward, the ref-free variant's precomputed advantage)."""
  adv = sg(adv)
  return jnp.maximum(adv, 0.0) if positive else adv


def sequence_log_ratio_sum(logp, ref_logp, mask):
  """S_i - S_i^ref = sum_t m (log pi_theta(y_t) - log pi_ref(y_t)), [B], clamped to +-20.

  Args:
    logp: [B, T] log-probs of the taken tokens under pi_theta.
    ref_logp: [B, T] the same under the frozen reference.
    mask: [B, T] response mask.
  """
  d = jnp.sum(jnp.where(mask > 0, logp - ref_logp, 0.0), axis=1)
  return jnp.clip(d, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)


def advantage_weighted(positive: bool = True):
  """No importance weight: loss_t = -A_t log pi(y_t), with A^+ = max(A, 0) when `positive`.

  With `positive=False` and A the precomputed advantage this is A-LoL ref-free (Baheti et al.
  2024, branch `a_lol_ref_free`); with A the reward it is weighted behaviour cloning
  (wBC); with A^+ and the sequence KL penalty below it is A-LoL KL (branch `a_lol` with
  `ppo_clip = 0, kl_beta > 0`).
  """

  def part(logp, batch, adv, mask):
    del batch
    return -_advantage(adv, positive) * logp * mask, {}

  return part


def sequence_weight(eps: float = 0.9, positive: bool = True):
  """A-LoL's clamped sequence importance weight (Baheti et al. 2024, the A-LoL gradient).

  w_i = clip(sg(exp(S_i - S_i^ref)), 1 - eps, 1 + eps), loss_t = -A_i^+ w_i log pi(y_t), so the
  token sum is -A_i^+ w_i S_i and the gradient of example i is A_i^+ w_i grad S_i. The paper's
  eps (`ppo_clip`) is 0.9, w in [0.1, 1.9]. With `positive=False` and A the reward it is R-LoL.
  Needs `batch.ref_logp`.

  Args:
    eps: clamp half-width in (0, 1].
    positive: use A^+ = max(A, 0) (A-LoL) or A as given (R-LoL, or A-LoL without the A > 0 filter).
  """
  _check_eps(eps)

  def part(logp, batch, adv, mask):
    ref = _ref_logp(batch, "sequence_weight (A-LoL)")
    raw = jnp.exp(sg(sequence_log_ratio_sum(logp, ref, mask)))
    w = jnp.clip(raw, 1.0 - eps, 1.0 + eps)
    loss = -_advantage(adv, positive) * w[:, None] * logp * mask
    row = (jnp.sum(mask, axis=1) > 0).astype(logp.dtype)
    return loss, _weight_metrics(raw, w, row)

  return part


def token_weight(eps: float = 0.9, positive: bool = True):
  """A-LoL seq: clamped per-token weights (Baheti et al. 2024, variant "A-LoL seq.").

  w_{i,t} = clip(sg(pi_theta(y_t) / pi_ref(y_t)), 1 - eps, 1 + eps),
  loss_t = -A_i^+ w_{i,t} log pi(y_t) (summed over tokens in the code, branch `a_lol_seq`).
  Needs `batch.ref_logp`.

  Args:
    eps: clamp half-width in (0, 1].
    positive: use A^+ = max(A, 0) or A as given.
  """
  _check_eps(eps)

  def part(logp, batch, adv, mask):
    ref = _ref_logp(batch, "token_weight (A-LoL seq)")
    d = jnp.clip(jnp.where(mask > 0, sg(logp) - ref, 0.0), -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    raw = jnp.exp(d)
    w = jnp.clip(raw, 1.0 - eps, 1.0 + eps)
    loss = -_advantage(adv, positive) * w * logp * mask
    return loss, _weight_metrics(raw, w, mask)

  return part


def gold_weight(lower_bound: float = 0.1, positive: bool = False):
  """GOLD's per-token weight max(u, sg(pi_theta(y_t))) (Pang & He, ICLR 2021, "Text Generation by
  Learning from Demonstrations": the per-token importance weight pi_theta(y_t) with a lower bound
  u, as A-LoL's code implements it; section and equation numbers not checked).

  loss_t = -A_t max(u, sg(pi_theta(y_t))) log pi(y_t). With A the sequence reward this is A-LoL's
  R-GOLD baseline (branch `r_gold`, u = 0.1); with a per-token A (a Q estimate) it is GOLD itself.

  Args:
    lower_bound: u in [0, 1].
    positive: clamp A at 0 first.
  """
  validation.check_positive("lower_bound", lower_bound, allow_zero=True)
  if isinstance(lower_bound, (int, float)) and lower_bound > 1.0:
    raise ValueError(f"`lower_bound` must be in [0, 1], got {lower_bound!r}.")

  def part(logp, batch, adv, mask):
    del batch
    p = jnp.exp(sg(logp))
    w = jnp.maximum(p, lower_bound)
    loss = -_advantage(adv, positive) * w * logp * mask
    return loss, _weight_metrics(p, w, mask)

  return part


def sequence_kl(beta: float = 0.1):
  """A-LoL KL's penalty beta * (S_i - S_i^ref) (Baheti et al. 2024, variant "A-LoL KL").

  Per token beta * m (log pi_theta(y_t) - log pi_ref(y_t)); summed over tokens and averaged over
  the batch it is the code's `kl_beta * mean_i(S_i - S_i^ref)`, a one-sample estimate of
  KL(pi_theta || pi_ref) evaluated on the dataset's responses (not on samples of pi_theta). No
  clamping, so the gradient is exactly beta * grad S_i. Needs `batch.ref_logp`.
  """
  validation.check_positive("beta", beta, allow_zero=True)

  def penalty(logp, batch, mask, entropy=None):
    del entropy
    ref = _ref_logp(batch, "sequence_kl (A-LoL KL)")
    d = jnp.where(mask > 0, logp - ref, 0.0)
    rows = (jnp.sum(mask, axis=1) > 0).astype(logp.dtype)
    seq = sg(jnp.sum(d, axis=1))
    return beta * d * mask, {"kl_ref_seq": jnp.sum(seq * rows) / jnp.maximum(jnp.sum(rows), 1.0)}

  return penalty
