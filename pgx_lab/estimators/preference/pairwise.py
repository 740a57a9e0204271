"""Pairwise preference losses: DPO (sigmoid), IPO and hinge over a chosen/rejected pair, + RPO.

With S(y) the summed (or, with `length_normalize`, token-mean) log-prob of a response and
  h = (S_theta(y_w) - S_ref(y_w)) - (S_theta(y_l) - S_ref(y_l)),
  sigmoid (DPO, Rafailov et al. 2023, eq. 7): -(1 - s) log sigmoid(beta h) - s log sigmoid(-beta h)
                                      (s = label smoothing: conservative DPO, Mitchell 2023)
  ipo    (Azar et al. 2023, eq. 17):  (h - 1 / (2 beta))^2      (beta plays IPO's tau)
  hinge  (SLiC, Zhao et al. 2023, eq. 2): max(0, 1 - beta h)
The paper's IPO sums log-ratios; many libraries average them per token: `length_normalize=True`.

RPO (Liu, Lu, Zhang, Liu, Guo, Yang, Blanchet, Wang 2024, "Provably Mitigating Overoptimization in
RLHF: Your SFT Loss is Implicitly an Adversarial Regularizer", arXiv 2405.16436, NeurIPS 2024) adds
an SFT (negative log-likelihood) term on responses of a baseline policy pi_base, taken in practice
to be the chosen responses:
  loss = mean_i pref_i + eta * beta * NLL,
  NLL  = mean_i -S_theta(y_w,i)                          (`sft_norm="sum"`, summed log-prob)
       = sum_{i,t} -m logp / sum_{i,t} m over chosen     (`sft_norm="mean"`, token-mean)
Confirmed (abstract and summaries of the paper, found with the search tool): the objective fuses
the DPO loss with an SFT loss imitating a baseline distribution, the SFT term acting as an
adversarial regulariser against over-optimisation. A reading, not confirmed against the paper's
equations: the weight eta * beta (from the spec, /work/shared/specs/llm_post_training.md section
10) and the summed log-prob. The token-mean is what TRL's `DPOTrainer(rpo_alpha=a)` computes
(cross-entropy averaged over the batch's chosen tokens; TRL cites Pang et al. 2024, arXiv
2404.19733, "Iterative Reasoning Preference Optimization", for it): TRL's rpo_alpha = a is
`sft_norm="mean"` with eta = a / beta.
"""

import dataclasses
from typing import Tuple

import jax
import jax.numpy as jnp

from pgx_lab import types
from pgx_lab import validation
from pgx_lab.estimators.likelihood import sequence_logp

Array = jax.Array
sg = jax.lax.stop_gradient

LOSS_TYPES = ("sigmoid", "ipo", "hinge")
SFT_NORMS = ("sum", "mean")


def log_ratio_margin(logp_chosen: Array, logp_rejected: Array, batch: types.PairBatch,
                     length_normalize: bool = False) -> Tuple[Array, Array, Array]:
  """Returns (h, chosen log-ratio, rejected log-ratio), each [B]."""
  sw = sequence_logp(logp_chosen, batch.chosen_mask, length_normalize=length_normalize)
  sl = sequence_logp(logp_rejected, batch.rejected_mask, length_normalize=length_normalize)
  rw = sequence_logp(batch.ref_chosen_logp, batch.chosen_mask, length_normalize=length_normalize)
  rl = sequence_logp(batch.ref_rejected_logp, batch.rejected_mask,
                     length_normalize=length_normalize)
  chosen, rejected = sw - rw, sl - rl
  return chosen - rejected, chosen, rejected


def sigmoid_loss(h: Array, beta: float, label_smoothing: float = 0.0) -> Array:
  """DPO's -log sigmoid(beta h), with cDPO's label smoothing; [B]."""
  return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * h) \
      - label_smoothing * jax.nn.log_sigmoid(-beta * h)


def ipo_loss(h: Array, beta: float) -> Array:
  """IPO's (h - 1/(2 beta))^2; [B]."""
  return (h - 1.0 / (2.0 * beta)) ** 2


def hinge_loss(h: Array, beta: float) -> Array:
  """SLiC's hinge max(0, 1 - beta h); [B]."""
  return jax.nn.relu(1.0 - beta * h)


def sft_nll(logp_chosen: Array, chosen_mask: Array, sft_norm: str = "sum") -> Array:
  """RPO's SFT term on the chosen responses, a scalar.

  Args:
    logp_chosen: [B, T] policy log-probs of the chosen tokens (-inf allowed under padding).
    chosen_mask: [B, T] response mask of the chosen responses.
    sft_norm: "sum" (mean over pairs of -summed log-prob) or "mean" (-log-prob averaged over all
      chosen tokens of the batch, TRL's rpo_alpha normalisation).
  """
  validation.check_option("sft_norm", sft_norm, SFT_NORMS)
  masked = jnp.where(chosen_mask > 0, logp_chosen, 0.0) * chosen_mask
  if sft_norm == "sum":
    return -jnp.mean(jnp.sum(masked, axis=-1))
  return -jnp.sum(masked) / jnp.maximum(jnp.sum(chosen_mask), 1.0)


def check_pair_inputs(logp_chosen, logp_rejected, batch):
  """Validates a chosen/rejected pair of log-prob arrays against a PairBatch; raises ValueError
  naming the argument."""
  validation.check_array("logp_chosen", logp_chosen, ndim=2)
  validation.check_array("logp_rejected", logp_rejected, ndim=2)
  for name, x, like, like_name in (
      ("batch.chosen_mask", batch.chosen_mask, logp_chosen, "logp_chosen"),
      ("batch.ref_chosen_logp", batch.ref_chosen_logp, logp_chosen, "logp_chosen"),
      ("batch.rejected_mask", batch.rejected_mask, logp_rejected, "logp_rejected"),
      ("batch.ref_rejected_logp", batch.ref_rejected_logp, logp_rejected, "logp_rejected")):
    validation.check_array(name, x, ndim=2, kind="number")
    validation.check_shape(name, x, like.shape, against=like_name)
  if logp_chosen.shape[0] != logp_rejected.shape[0]:
    raise ValueError(f"`logp_rejected` must have {logp_chosen.shape[0]} rows like `logp_chosen`, "
                     f"got shape {logp_rejected.shape}.")


@dataclasses.dataclass(frozen=True)
class PairwiseLoss:
  """`loss, metrics = PairwiseLoss(...)(logp_chosen, logp_rejected, batch)`, batch a `PairBatch`.

  Metrics: `reward_accuracy` (share of pairs with h > 0), `margin` (mean beta h),
  `reward_chosen` and `reward_rejected` (mean beta log-ratios, DPO's implicit rewards), and with
  `sft_weight` > 0 (RPO) `sft_nll` (the SFT term before its weight eta * beta).

  `sft_weight` is RPO's eta (0: no SFT term), `sft_norm` its normalisation ("sum" or "mean").
  """

  loss_type: str = "sigmoid"
  beta: float = 0.1
  length_normalize: bool = False
  label_smoothing: float = 0.0
  sft_weight: float = 0.0
  sft_norm: str = "sum"

  def __post_init__(self):
    validation.check_option("loss_type", self.loss_type, LOSS_TYPES)
    validation.check_positive("beta", self.beta)
    if not 0.0 <= self.label_smoothing < 0.5:
      raise ValueError(f"`label_smoothing` must be in [0, 0.5), got {self.label_smoothing!r}.")
    validation.check_positive("sft_weight", self.sft_weight, allow_zero=True)
    validation.check_option("sft_norm", self.sft_norm, SFT_NORMS)

  def per_pair(self, logp_chosen: Array, logp_rejected: Array, batch: types.PairBatch) -> Array:
    """The preference loss of each pair, [B] (without RPO's SFT term, which `__call__` adds)."""
    check_pair_inputs(logp_chosen, logp_rejected, batch)
    h, _, _ = log_ratio_margin(logp_chosen, logp_rejected, batch, self.length_normalize)
    if self.loss_type == "sigmoid":
      return sigmoid_loss(h, self.beta, self.label_smoothing)
    if self.loss_type == "ipo":
      return ipo_loss(h, self.beta)
    return hinge_loss(h, self.beta)

  def __call__(self, logp_chosen: Array, logp_rejected: Array, batch: types.PairBatch):
    losses = self.per_pair(logp_chosen, logp_rejected, batch)
    h, chosen, rejected = log_ratio_margin(sg(logp_chosen), sg(logp_rejected), batch,
                                           self.length_normalize)
    metrics = {
        "reward_accuracy": jnp.mean((h > 0).astype(jnp.float32)),
        "margin": jnp.mean(self.beta * h),
        "reward_chosen": jnp.mean(self.beta * chosen),
        "reward_rejected": jnp.mean(self.beta * rejected),
    }
    loss = jnp.mean(losses)
    if self.sft_weight > 0:
      nll = sft_nll(logp_chosen, batch.chosen_mask, self.sft_norm)
      loss = loss + self.sft_weight * self.beta * nll
      metrics["sft_nll"] = sg(nll)
    return loss, metrics


def dpo(beta: float = 0.1, label_smoothing: float = 0.0, length_normalize: bool = False):
  """DPO (Rafailov et al. 2023, eq. 7); label_smoothing > 0 is conservative DPO (cDPO)."""
  return PairwiseLoss("sigmoid", beta, length_normalize, label_smoothing)


def ipo(beta: float = 0.1, length_normalize: bool = False):
  """IPO (Azar et al. 2023, eq. 17) with tau = beta."""
  return PairwiseLoss("ipo", beta, length_normalize)


def hinge(beta: float = 0.1, length_normalize: bool = False):
  """SLiC-HF's hinge loss (Zhao et al. 2023, eq. 2) on the reference-calibrated log-ratio."""
  return PairwiseLoss("hinge", beta, length_normalize)


def rpo(beta: float = 0.1, eta: float = 1.0, sft_norm: str = "sum",
        length_normalize: bool = False) -> PairwiseLoss:
  """RPO (Liu et al. 2024, arXiv 2405.16436): DPO + eta * beta * SFT NLL of the chosen responses.

  `sft_norm="sum"` is the summed log-prob (our reading of the paper), "mean" the token-mean
  (TRL's rpo_alpha = eta * beta). `length_normalize` applies to DPO's log-ratios only.
  """
  if isinstance(eta, (int, float)) and eta <= 0:
    raise ValueError(f"`eta` must be > 0 for RPO (eta = 0 is DPO), got {eta!r}.")
  return PairwiseLoss("sigmoid", beta, length_normalize, 0.0, eta, sft_norm)
