"""Named estimators: a few lines each that pick the four parts.

Every preset returns an `Estimator`; swap a part with `.replace(...)`. Option errors (an unknown
`loss_type`, a negative eps) are raised here, when the preset is built.
"""

from typing import Optional

from pgx_lab import validation
from pgx_lab.estimators import advantage_parts as adv
from pgx_lab.estimators import aggregation as agg
from pgx_lab.estimators import masks
from pgx_lab.estimators import reference_parts as ref
from pgx_lab.estimators.estimator import Estimator
from pgx_lab.estimators.estimator import penalties_for

GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def sft() -> Estimator:
  """Supervised fine-tuning / behaviour cloning: loss = -token-mean log pi(y_t) (A = 1, no ratio)."""
  return Estimator(advantage=adv.constant(1.0), reference=ref.on_policy(),
                   aggregate=agg.token_mean, name="sft")


def reinforce(baseline: str = "none", gamma: float = 1.0, entropy_coef: float = 0.0) -> Estimator:
  """REINFORCE (Williams 1992, eq. 11): loss = -mean_i (R_i - b_i) sum_t log pi(y_{i,t}).

  `baseline` is "none", "batch" (batch mean), "group" (group mean) or "loo" (RLOO, Kool et al.
  2019: b_i = mean of the other G - 1 rewards of i's group, which keeps the estimator unbiased).
  Per-step rewards [B, T] are summed with discount `gamma` into R(tau).
  """
  return Estimator(advantage=adv.returns(baseline, gamma), reference=ref.on_policy(),
                   aggregate=agg.seq_mean_token_sum,
                   penalties=penalties_for(entropy_coef=entropy_coef), name=f"reinforce_{baseline}")


def rloo() -> Estimator:
  """RLOO (Kool et al. 2019; Ahmadian et al. 2024): `reinforce(baseline="loo")`."""
  return reinforce(baseline="loo").replace(name="rloo")


def gpomdp(gamma: float = 1.0, baseline: str = "none") -> Estimator:
  """GPOMDP (Baxter & Bartlett 2001): loss = -mean_i sum_t (sum_{t'>=t} gamma^t' r_t') log pi(a_t|s_t).

  Each score is weighted only by the rewards that follow it (causality), which removes the
  variance of past rewards and keeps the estimate unbiased for J = E[sum_t gamma^t r_t].
  """
  return Estimator(advantage=adv.reward_to_go(gamma, baseline), reference=ref.on_policy(),
                   aggregate=agg.seq_mean_token_sum, name="gpomdp")


def ppo(eps: float = 0.2, *, eps_high: Optional[float] = None, dual_clip: Optional[float] = None,
        advantage: str = "precomputed", gae_lambda: float = 0.95, whiten: bool = True,
        entropy_coef: float = 0.0, kl_beta: float = 0.0) -> Estimator:
  """PPO-clip (Schulman et al. 2017, eq. 7), token-mean aggregation (verl's default).

  Args:
    eps: clip range (eps_low).
    eps_high: upper clip range (DAPO's clip-higher); None means `eps`.
    dual_clip: dual-clip constant c > 1 for negative advantages (Ye et al. 2020), or None.
    advantage: "precomputed" (`batch.advantages`, e.g. GAE from a critic) or "gae" (computed
      from `batch.rewards`, `batch.values`, `batch.discounts`).
    gae_lambda: lambda when `advantage="gae"`.
    whiten: normalise advantages over the batch.
    entropy_coef: entropy bonus coefficient (eq. 9's c2); needs `entropy=` at call time.
    kl_beta: k3 KL-to-reference coefficient.
  """
  validation.check_option("advantage", advantage, ("precomputed", "gae"))
  validation.check_positive("eps", eps)
  part = adv.gae(gae_lambda) if advantage == "gae" else adv.precomputed()
  if whiten:
    part = adv.whitened(part)
  return Estimator(advantage=part, reference=ref.token_clip(eps, eps_high, dual_clip=dual_clip),
                   aggregate=agg.token_mean,
                   penalties=penalties_for(kl_beta, "k3", entropy_coef), name="ppo")


_GRPO_AGGREGATE = {
    "grpo": agg.seq_mean_token_mean,   # Shao et al. 2024, eq. 3
    "bnpo": agg.token_mean,            # local token count
    "dr_grpo": agg.token_sum_norm,     # Liu et al. 2025: B * MAX_TOKENS
    "dapo": agg.token_mean,            # Yu et al. 2025, eq. 8 (pass batch.loss_normalizer globally)
}


def grpo(loss_type: str = "grpo", *, eps_low: float = 0.2, eps_high: Optional[float] = None,
         kl_beta: float = 0.0, kl_estimator: str = "k3", scale: Optional[str] = None,
         unbiased_std: bool = False, dual_clip: Optional[float] = None,
         ratio_cap: Optional[float] = None, entropy_coef: float = 0.0) -> Estimator:
  """GRPO (Shao et al. 2024, DeepSeekMath, eq. 3) and its loss types.

  Advantage (R_i - mean_g R) / (std_g R + eps) broadcast to tokens, PPO's token clip, k3 KL with
  `kl_beta` (0.04 in the paper, 0 by default here as in TRL and DAPO). `loss_type` picks the
  normaliser:
    "grpo":    mean over sequences of per-sequence token means (the paper's eq. 3);
    "bnpo":    sum over tokens / tokens in this batch;
    "dr_grpo": sum over tokens / (B * T_max), a constant (Liu et al. 2025, eq. 3), and, unless
               `scale` says otherwise, no std division (Dr.GRPO's unbiased advantage);
    "dapo":    sum over tokens / tokens in the whole generation batch (Yu et al. 2025, eq. 8): the
               global count comes from `batch.loss_normalizer`, else the local count.
  `scale` in {"group", "batch", "none"} overrides the std scaling. `eps_high` is DAPO's clip-higher.
  """
  validation.check_option("loss_type", loss_type, GRPO_LOSS_TYPES)
  if scale is None:
    scale = "none" if loss_type == "dr_grpo" else "group"
  return Estimator(
      advantage=adv.group_normalized(scale=scale, unbiased_std=unbiased_std),
      reference=ref.token_clip(eps_low, eps_high, dual_clip=dual_clip, ratio_cap=ratio_cap),
      aggregate=_GRPO_AGGREGATE[loss_type],
      penalties=penalties_for(kl_beta, kl_estimator, entropy_coef),
      name=loss_type)


def gspo(eps_low: float = 3e-4, eps_high: float = 4e-4, kl_beta: float = 0.0) -> Estimator:
  """GSPO (Zheng et al. 2025, eq. 5-7): sequence ratio s_i = exp(mean_t log-ratio), clipped per sequence.

  Group-normalised advantage; loss = -mean_i min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i).
  The paper's clip range is 3e-4 / 4e-4.
  """
  return Estimator(advantage=adv.group_normalized("group"),
                   reference=ref.sequence_clip(eps_low, eps_high),
                   aggregate=agg.seq_mean_token_mean, penalties=penalties_for(kl_beta),
                   name="gspo")


def gspo_token(eps_low: float = 3e-4, eps_high: float = 4e-4, kl_beta: float = 0.0,
               advantage=None) -> Estimator:
  """GSPO-token (Zheng et al. 2025, eq. 13-14): per-token advantages with the sequence ratio's value.

  `advantage` is any advantage part (per-token ones included); default the group-normalised one,
  for which the gradient equals GSPO's.
  """
  return Estimator(advantage=advantage or adv.group_normalized("group"),
                   reference=ref.gspo_token(eps_low, eps_high),
                   aggregate=agg.seq_mean_token_mean, penalties=penalties_for(kl_beta),
                   name="gspo_token")


def cispo(ratio_max: float = 5.0, ratio_min: float = 0.0, scale: str = "group",
          kl_beta: float = 0.0) -> Estimator:
  """CISPO (MiniMax-M1, Chen et al. 2025, eq. 4-5): -sg(clip(r)) A log pi, token-mean over the batch.

  The detached weight is capped at `ratio_max` given directly (no lower bound by default, as in
  the paper); clipped tokens keep their gradient.
  """
  return Estimator(advantage=adv.group_normalized(scale=scale),
                   reference=ref.cispo(ratio_max, ratio_min), aggregate=agg.token_mean,
                   penalties=penalties_for(kl_beta), name="cispo")


def positive_only(estimator: Estimator) -> Estimator:
  """Adds the positive-advantage filter to any estimator's mask."""
  return estimator.replace(mask=masks.all_of(estimator.mask, masks.positive_advantage),
                           name=f"{estimator.name}_positive")
