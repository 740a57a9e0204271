"""Batch types shared by every estimator.

Shapes use `B` for the number of sequences (responses, trajectories) and `T` for the padded number
of tokens (time steps). Every field except `mask` is optional; a part that needs a missing field
says which one when the estimator is called.
"""

from typing import Any, Dict, Optional

import flax.struct
import jax

Array = jax.Array
Metrics = Dict[str, Array]


@flax.struct.dataclass
class SequenceBatch:
  """What an on-policy or off-policy score-function estimator consumes.

  Attributes:
    mask: [B, T] response mask, 1 for tokens that carry gradient, 0 for prompt and padding.
    old_logp: [B, T] log-probs of the taken tokens under the behaviour (sampling) policy.
    ref_logp: [B, T] log-probs of the taken tokens under a frozen reference policy (KL penalties).
    rewards: [B] sequence rewards, or [B, T] per-token rewards (returns, GPOMDP, GAE).
    group_ids: [B] int32 prompt ids in [0, B): responses to the same prompt share an id.
    advantages: [B] or [B, T] precomputed advantages (GAE from a critic, offline advantages).
      Used by the `precomputed` advantage part.
    values: [B, T + 1] critic values for GAE (the last column is the bootstrap value).
    discounts: [B, T] per-step discounts (gamma * (1 - terminated)) for GAE.
    tokens: [B, T] int32 token (action) ids; estimators never read them, models do.
    loss_normalizer: scalar, the global denominator of the aggregation when this batch is one
      micro-batch of a larger one (see `estimators.aggregation`); None uses the local count.
  """

  mask: Array
  old_logp: Optional[Array] = None
  ref_logp: Optional[Array] = None
  rewards: Optional[Array] = None
  group_ids: Optional[Array] = None
  advantages: Optional[Array] = None
  values: Optional[Array] = None
  discounts: Optional[Array] = None
  tokens: Optional[Array] = None
  loss_normalizer: Optional[Array] = None

  @property
  def batch_size(self) -> int:
    return self.mask.shape[0]


@flax.struct.dataclass
class PairBatch:
  """What a pairwise preference loss consumes (DPO, IPO, hinge, ...).

  Attributes:
    chosen_mask: [B, T] response mask of the preferred responses.
    rejected_mask: [B, T] response mask of the dispreferred responses.
    ref_chosen_logp: [B, T] reference-model token log-probs of the preferred responses.
    ref_rejected_logp: [B, T] reference-model token log-probs of the dispreferred responses.
  """

  chosen_mask: Array
  rejected_mask: Array
  ref_chosen_logp: Array
  ref_rejected_logp: Array


@flax.struct.dataclass
class Trajectory:
  """A batch of environment rollouts, batch-major, as `rollout` returns them.

  Attributes:
    obs: [B, T, ...] observations at which the actions were taken.
    actions: [B, T, ...] actions.
    rewards: [B, T] rewards.
    logp: [B, T] log-probs of the actions under the behaviour policy.
    terminated: [B, T] bool, the step entered a terminal state (no bootstrap).
    truncated: [B, T] bool, a time limit cut the episode after the step (bootstrap).
    mask: [B, T] float, 1 for steps of the episode (up to and including its last step).
    values: [B, T + 1] critic values, the last one the bootstrap value; None without a critic.
  """

  obs: Any
  actions: Array
  rewards: Array
  logp: Array
  terminated: Array
  truncated: Array
  mask: Array
  values: Optional[Array] = None

  def to_sequence_batch(self, gamma: float = 1.0) -> SequenceBatch:
    """The estimators' view: mask, old_logp, per-step rewards, values and discounts
    gamma * (1 - terminated) for GAE."""
    discounts = gamma * (1.0 - self.terminated.astype(self.rewards.dtype))
    return SequenceBatch(mask=self.mask, old_logp=self.logp, rewards=self.rewards,
                         values=self.values, discounts=discounts)


def replace(batch: Any, **fields) -> Any:
  """Returns `batch` with `fields` replaced (a pure update of a flax.struct dataclass)."""
  return batch.replace(**fields)
