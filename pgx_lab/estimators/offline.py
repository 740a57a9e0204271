"""Offline presets on a fixed dataset: A-LoL and its variants, R-LoL, wBC, R-GOLD/GOLD, NLL.

Baheti et al., ICLR 2024, "Leftover Lunch: Advantage-based Offline Reinforcement Learning for
Language Models" (the formulas were checked against the authors' code, abaheti95/LoL-RL,
`lolrl_qlora_llama_hh.py`; the paper's section/equation numbers were not checked). Every preset
is an `Estimator` over `offline_parts`, called as `loss, metrics = est(logp, batch)`.
Which field of the `SequenceBatch` each reads:
  A-LoL variants: `batch.advantages` [B] (A = R - V_ref(x), computed once before training; see
                  `pgx_lab.selection.priority`), `batch.ref_logp` [B, T] for the weighted ones;
  R-LoL, wBC, R-GOLD: `batch.rewards` [B];
  NLL: nothing but `batch.mask`.
`reduce="sum"` (the default) sums log-probs over a response's tokens and averages over responses,
as the authors' code does ("Consistently sum is better than mean"); `reduce="mean"` divides each
response's token sum by its length first. The importance weights always use the summed log-ratio.
"""

from pgx_lab import validation
from pgx_lab.estimators import advantage_parts as adv
from pgx_lab.estimators import aggregation as agg
from pgx_lab.estimators import offline_parts as parts
from pgx_lab.estimators.estimator import Estimator

REDUCTIONS = {"sum": agg.seq_mean_token_sum, "mean": agg.seq_mean_token_mean}


def _aggregate(reduce):
  validation.check_option("reduce", reduce, tuple(REDUCTIONS))
  return REDUCTIONS[reduce]


def alol(eps: float = 0.9, reduce: str = "sum", positive: bool = True) -> Estimator:
  """A-LoL (Baheti et al. 2024, the A-LoL gradient):
  loss = -mean_i A_i^+ clip(sg(pi(y_i)/pi_ref(y_i)), 1 - eps, 1 + eps) S_i.

  The sequence ratio exp(S_i - S_i^ref) is detached and clamped (eps = 0.9 in the paper).
  `positive=False` keeps negative advantages (the "no A > 0 filter" ablation).
  """
  return Estimator(advantage=adv.precomputed(), reference=parts.sequence_weight(eps, positive),
                   aggregate=_aggregate(reduce), name="alol")


def alol_seq(eps: float = 0.9, reduce: str = "sum", positive: bool = True) -> Estimator:
  """A-LoL seq. (Baheti et al. 2024, a variant): per-token clamped ratios,
  -mean_i A_i^+ sum_t clip(sg(pi(y_t)/pi_ref(y_t)), 1-eps, 1+eps) log pi(y_t)."""
  return Estimator(advantage=adv.precomputed(), reference=parts.token_weight(eps, positive),
                   aggregate=_aggregate(reduce), name="alol_seq")


def alol_ref_free(reduce: str = "sum") -> Estimator:
  """A-LoL ref-free (Baheti et al. 2024, a variant): -mean_i A_i S_i, no importance weight.

  A is used as given (the code feeds the priority-sampled, already positive advantages), so it
  equals `wbc` with the advantage in place of the reward.
  """
  return Estimator(advantage=adv.precomputed(), reference=parts.advantage_weighted(False),
                   aggregate=_aggregate(reduce), name="alol_ref_free")


def alol_kl(beta: float = 0.1, reduce: str = "sum", positive: bool = True) -> Estimator:
  """A-LoL KL (Baheti et al. 2024, a variant): -mean_i A_i^+ S_i + beta mean_i (S_i - S_i^ref).

  No importance weight (the code asserts `ppo_clip == 0` with `kl_beta > 0`); the KL is a
  one-sample estimate on the dataset's responses. The code's `kl_beta` defaults to 0 and the
  value of the paper's runs is not stated (unconfirmed); 0.1 here.
  """
  return Estimator(advantage=adv.precomputed(), reference=parts.advantage_weighted(positive),
                   aggregate=_aggregate(reduce), penalties=(parts.sequence_kl(beta),),
                   name="alol_kl")


def rlol(eps: float = 0.9, reduce: str = "sum") -> Estimator:
  """R-LoL (Baheti et al. 2024, a variant): A-LoL's clamped sequence weight with the reward R_i
  in place of the advantage: -mean_i R_i clip(sg(pi/pi_ref), 1-eps, 1+eps) S_i."""
  return Estimator(advantage=adv.returns("none"), reference=parts.sequence_weight(eps, False),
                   aggregate=_aggregate(reduce), name="rlol")


def wbc(reduce: str = "sum") -> Estimator:
  """Weighted behaviour cloning, a baseline of Baheti et al. 2024: loss = -mean_i R_i S_i."""
  return Estimator(advantage=adv.returns("none"), reference=parts.advantage_weighted(False),
                   aggregate=_aggregate(reduce), name="wbc")


def rgold(lower_bound: float = 0.1, reduce: str = "sum", source: str = "rewards") -> Estimator:
  """R-GOLD / GOLD (Pang & He 2021; A-LoL's baseline, branch `r_gold`):
  -mean_i A_i sum_t max(u, sg(pi(y_t))) log pi(y_t).

  `source="rewards"` uses the sequence reward (R-GOLD, u = 0.1 as in A-LoL's code);
  `source="advantages"` uses `batch.advantages`, [B] or a per-token [B, T] Q estimate (GOLD).
  """
  validation.check_option("source", source, ("rewards", "advantages"))
  part = adv.returns("none") if source == "rewards" else adv.precomputed()
  return Estimator(advantage=part, reference=parts.gold_weight(lower_bound),
                   aggregate=_aggregate(reduce), name="rgold")


def nll(reduce: str = "sum") -> Estimator:
  """NLL on the data, A-LoL's reference/SFT objective: -mean_i S_i (token sum, as in the code).

  `reduce="mean"` gives the per-response token mean; `presets.sft` is the token mean over the batch.
  """
  return Estimator(advantage=adv.constant(1.0), reference=parts.advantage_weighted(False),
                   aggregate=_aggregate(reduce), name="nll")


PRESETS = {"alol": alol, "alol_seq": alol_seq, "alol_ref_free": alol_ref_free,
           "alol_kl": alol_kl, "rlol": rlol, "wbc": wbc, "rgold": rgold, "nll": nll}
