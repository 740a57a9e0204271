"""Pairwise preference losses: DPO (sigmoid), IPO and hinge over a chosen/rejected pair.

With S(y) the summed (or, with `length_normalize`, token-mean) log-prob of a response and
  h = (S_theta(y_w) - S_ref(y_w)) - (S_theta(y_l) - S_ref(y_l)),
  sigmoid (DPO, Rafailov et al. 2023, eq. 7): -(1 - s) log sigmoid(beta h) - s log sigmoid(-beta h)
                                      (s = label smoothing: conservative DPO, Mitchell 2023)
  ipo    (Azar et al. 2023, eq. 17):  (h - 1 / (2 beta))^2      (beta plays IPO's tau)
  hinge  (SLiC, Zhao et al. 2023, eq. 2): max(0, 1 - beta h)
The paper's IPO sums log-ratios; many libraries average them per token: `length_normalize=True`.
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


def _check(logp_chosen, logp_rejected, batch):
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
  `reward_chosen` and `reward_rejected` (mean beta log-ratios, DPO's implicit rewards).
  """

  loss_type: str = "sigmoid"
  beta: float = 0.1
  length_normalize: bool = False
  label_smoothing: float = 0.0

  def __post_init__(self):
    validation.check_option("loss_type", self.loss_type, LOSS_TYPES)
    validation.check_positive("beta", self.beta)
    if not 0.0 <= self.label_smoothing < 0.5:
      raise ValueError(f"`label_smoothing` must be in [0, 0.5), got {self.label_smoothing!r}.")

  def per_pair(self, logp_chosen: Array, logp_rejected: Array, batch: types.PairBatch) -> Array:
    """The loss of each pair, [B]."""
    _check(logp_chosen, logp_rejected, batch)
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
    return jnp.mean(losses), metrics


def dpo(beta: float = 0.1, label_smoothing: float = 0.0, length_normalize: bool = False):
  """DPO (Rafailov et al. 2023, eq. 7); label_smoothing > 0 is conservative DPO (cDPO)."""
  return PairwiseLoss("sigmoid", beta, length_normalize, label_smoothing)


def ipo(beta: float = 0.1, length_normalize: bool = False):
  """IPO (Azar et al. 2023, eq. 17) with tau = beta."""
  return PairwiseLoss("ipo", beta, length_normalize)


def hinge(beta: float = 0.1, length_normalize: bool = False):
  """SLiC-HF's hinge loss (Zhao et al. 2023, eq. 2) on the reference-calibrated log-ratio."""
  return PairwiseLoss("hinge", beta, length_normalize)
