"""Advantage parts for `Estimator`: `part(batch) -> adv [B] or [B, T]`.

Each factory checks its options when called (before anything traces) and reads what it needs
from the `SequenceBatch`, naming a missing field. The maths lives in `advantages`.
"""


import jax.numpy as jnp

from pgx_lab import validation
from pgx_lab.estimators import advantages

BASELINES = ("none", "batch", "group", "loo")


def _rewards(batch, who):
  return validation.require("batch.rewards", batch.rewards, who)


def _group_ids(batch, who):
  return validation.require("batch.group_ids", batch.group_ids, who)


def _valid_rows(batch):
  """Rows with at least one response token; all-masked rows stay out of group statistics."""
  return (batch.mask.sum(axis=1) > 0).astype(jnp.float32)


def _sequence_rewards(batch, who, gamma):
  r = _rewards(batch, who)
  return advantages.discounted_return(r, batch.mask, gamma) if r.ndim == 2 else r


def constant(value: float = 1.0):
  """A = value for every sequence: SFT / behaviour cloning (A = 1)."""

  def part(batch):
    return jnp.full((batch.mask.shape[0],), value, jnp.float32)

  return part


def precomputed():
  """A = batch.advantages, computed elsewhere (a critic's GAE, offline advantages)."""

  def part(batch):
    return validation.require("batch.advantages", batch.advantages, "the precomputed advantage")

  return part


def returns(baseline: str = "none", gamma: float = 1.0):
  """Sequence return minus a baseline, REINFORCE's weight (Williams 1992, eq. 11).

  Args:
    baseline: "none", "batch" (the batch mean, which includes sample i itself and so scales the
      expected gradient by (B - 1) / B), "group" (the mean of i's group, Dr.GRPO's advantage) or
      "loo" (leave-one-out, RLOO: unbiased).
    gamma: discount used when `batch.rewards` is per step [B, T].
  """
  validation.check_option("baseline", baseline, BASELINES)
  who = f"returns(baseline={baseline!r})"

  def part(batch):
    r = _sequence_rewards(batch, who, gamma)
    if baseline == "none":
      return r
    if baseline == "batch":
      return advantages.batch_mean_baseline(r, _valid_rows(batch))
    if baseline == "group":
      return advantages.group_normalized(r, _group_ids(batch, who), scale="none",
                                         valid=_valid_rows(batch))
    return advantages.leave_one_out(r, _group_ids(batch, who), valid=_valid_rows(batch))

  return part


def group_normalized(scale: str = "group", unbiased_std: bool = False, eps: float = 1e-6,
                     eps_in_sqrt: bool = False):
  """GRPO's group-normalised advantage (see `advantages.group_normalized`)."""
  validation.check_option("scale", scale, advantages.SCALES)

  def part(batch):
    who = "group_normalized"
    r = _sequence_rewards(batch, who, 1.0)
    return advantages.group_normalized(r, _group_ids(batch, who), scale=scale,
                                       unbiased_std=unbiased_std, eps=eps, eps_in_sqrt=eps_in_sqrt,
                                       valid=_valid_rows(batch))

  return part


def reward_to_go(gamma: float = 1.0, baseline: str = "none", discount_from_start: bool = True):
  """GPOMDP's per-step weight (see `advantages.reward_to_go`), minus an optional time baseline.

  Args:
    gamma: discount.
    baseline: "none" or "batch" (the mean reward-to-go of step t over the batch, a time-dependent
      baseline that keeps the estimator unbiased up to the (B - 1) / B factor).
    discount_from_start: weight step t by gamma^t (the unbiased form).
  """
  validation.check_option("baseline", baseline, ("none", "batch"))

  def part(batch):
    r = _rewards(batch, "reward_to_go")
    validation.check_array("batch.rewards", r, ndim=2)
    g = advantages.reward_to_go(r, batch.mask, gamma, discount_from_start=discount_from_start)
    if baseline == "batch":
      m = batch.mask.astype(g.dtype)
      mean_t = jnp.sum(g * m, axis=0) / jnp.maximum(jnp.sum(m, axis=0), 1.0)
      g = (g - mean_t) * m
    return g

  return part


def gae(lambda_: float = 0.95, whiten: bool = False):
  """GAE from `batch.rewards` [B, T], `batch.values` [B, T + 1], `batch.discounts` [B, T].

  Args:
    lambda_: GAE's lambda (Schulman et al. 2016, eq. 16).
    whiten: normalise the advantages over the batch (PPO's usual practice).
  """

  def part(batch):
    who = "gae"
    r = _rewards(batch, who)
    v = validation.require("batch.values", batch.values, who)
    d = validation.require("batch.discounts", batch.discounts, who)
    a = advantages.gae(r, v, d, lambda_, batch.mask)
    return advantages.whiten(a, batch.mask) if whiten else a

  return part


def whitened(inner, shift_mean: bool = True):
  """Wraps an advantage part and whitens its output over the valid entries: response tokens for
  a per-token advantage, rows with at least one response token for a sequence advantage."""

  def part(batch):
    a = inner(batch)
    m = batch.mask if a.ndim == 2 else _valid_rows(batch)
    return advantages.whiten(a, m, shift_mean=shift_mean)

  return part
