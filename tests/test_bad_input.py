"""Bad input raises ValueError naming the argument: when a preset is built, when it is called,
and under `jax.jit` (shapes and dtypes are static, so the check fires while tracing, before
anything compiles)."""

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import pytest

from pgx_lab import PairBatch
from pgx_lab import SequenceBatch
from pgx_lab import presets
from pgx_lab.estimators import Estimator
from pgx_lab.estimators import advantage_parts
from pgx_lab.estimators import preference
from pgx_lab.estimators import reference_parts

B, T = 3, 4


def _f(*shape):
  return jnp.zeros(shape, jnp.float32)


def _batch(**fields) -> SequenceBatch:
  """A valid batch for every preset; `fields` replace (or, with None, remove) some of them."""
  base = dict(
      mask=jnp.ones((B, T), jnp.float32),
      old_logp=_f(B, T) - 1.0,
      ref_logp=_f(B, T) - 1.0,
      rewards=jnp.array([1.0, 0.0, 1.0]),
      group_ids=jnp.array([0, 0, 1], jnp.int32),
      advantages=jnp.array([0.5, -0.5, 1.0]),
      values=_f(B, T + 1),
      discounts=jnp.ones((B, T)),
  )
  base.update(fields)
  return SequenceBatch(**base)


LOGP = _f(B, T) - 1.0


@dataclasses.dataclass
class CallCase:
  est: Callable[[], Estimator]
  name: str                       # the argument the message must name
  logp: Any = None                # None: a valid [B, T] logp
  batch: Optional[SequenceBatch] = None
  entropy: Any = None


CALL_CASES = {
    # logp itself.
    "logp_rank_1": CallCase(presets.grpo, "logp", logp=_f(B)),
    "logp_rank_3": CallCase(presets.grpo, "logp", logp=_f(B, T, 1)),
    "logp_int": CallCase(presets.ppo, "logp", logp=jnp.zeros((B, T), jnp.int32)),
    # batch fields of the wrong shape or dtype.
    "mask_shape": CallCase(presets.sft, "batch.mask", batch=_batch(mask=jnp.ones((B, T + 1)))),
    "mask_rank_1": CallCase(presets.sft, "batch.mask", batch=_batch(mask=jnp.ones((B,)))),
    "old_logp_shape": CallCase(presets.ppo, "batch.old_logp", batch=_batch(old_logp=_f(B, T - 1))),
    "old_logp_rows": CallCase(presets.grpo, "batch.old_logp", batch=_batch(old_logp=_f(B + 1, T))),
    "ref_logp_shape": CallCase(lambda: presets.grpo(kl_beta=0.04), "batch.ref_logp",
                               batch=_batch(ref_logp=_f(B, T + 2))),
    "rewards_length": CallCase(presets.grpo, "batch.rewards", batch=_batch(rewards=_f(B + 1))),
    "rewards_token_shape": CallCase(presets.reinforce, "batch.rewards",
                                    batch=_batch(rewards=_f(B, T + 1))),
    "rewards_rank_3": CallCase(presets.rloo, "batch.rewards", batch=_batch(rewards=_f(B, T, 1))),
    "rewards_sequence_for_gpomdp": CallCase(presets.gpomdp, "batch.rewards"),
    "group_ids_float": CallCase(presets.grpo, "batch.group_ids",
                                batch=_batch(group_ids=jnp.array([0.0, 0.0, 1.0]))),
    "group_ids_length": CallCase(presets.rloo, "batch.group_ids",
                                 batch=_batch(group_ids=jnp.array([0, 1], jnp.int32))),
    "advantages_shape": CallCase(presets.ppo, "batch.advantages",
                                 batch=_batch(advantages=_f(B, T + 1))),
    "values_shape": CallCase(lambda: presets.ppo(advantage="gae"), "batch.values",
                             batch=_batch(rewards=_f(B, T), values=_f(B, T))),
    "entropy_shape": CallCase(lambda: presets.ppo(entropy_coef=0.01), "entropy",
                              entropy=_f(B, T + 1)),
    # missing fields.
    "ppo_without_old_logp": CallCase(presets.ppo, "batch.old_logp", batch=_batch(old_logp=None)),
    "grpo_without_old_logp": CallCase(presets.grpo, "batch.old_logp", batch=_batch(old_logp=None)),
    "dr_grpo_without_old_logp": CallCase(lambda: presets.grpo("dr_grpo"), "batch.old_logp",
                                         batch=_batch(old_logp=None)),
    "gspo_without_old_logp": CallCase(presets.gspo, "batch.old_logp", batch=_batch(old_logp=None)),
    "cispo_without_old_logp": CallCase(presets.cispo, "batch.old_logp",
                                       batch=_batch(old_logp=None)),
    "grpo_without_rewards": CallCase(presets.grpo, "batch.rewards", batch=_batch(rewards=None)),
    "reinforce_without_rewards": CallCase(presets.reinforce, "batch.rewards",
                                          batch=_batch(rewards=None)),
    "gpomdp_without_rewards": CallCase(presets.gpomdp, "batch.rewards", batch=_batch(rewards=None)),
    "rloo_without_group_ids": CallCase(presets.rloo, "batch.group_ids",
                                       batch=_batch(group_ids=None)),
    "ppo_without_advantages": CallCase(presets.ppo, "batch.advantages",
                                       batch=_batch(advantages=None)),
    "kl_without_ref_logp": CallCase(lambda: presets.grpo(kl_beta=0.04), "batch.ref_logp",
                                    batch=_batch(ref_logp=None)),
    "entropy_bonus_without_entropy": CallCase(lambda: presets.ppo(entropy_coef=0.01), "entropy"),
    "reinforce_entropy_without_entropy": CallCase(
        lambda: presets.reinforce(entropy_coef=0.01), "entropy"),
}


def _call(case: CallCase):
  est = case.est()
  batch = case.batch if case.batch is not None else _batch()
  logp = case.logp if case.logp is not None else LOGP
  return est, batch, logp


@pytest.mark.parametrize("case_id", sorted(CALL_CASES))
def test_call_raises_value_error_naming_the_argument(case_id):
  case = CALL_CASES[case_id]
  est, batch, logp = _call(case)
  with pytest.raises(ValueError) as err:
    est(logp, batch, entropy=case.entropy)
  assert f"`{case.name}`" in str(err.value), str(err.value)


@pytest.mark.parametrize("case_id", sorted(CALL_CASES))
def test_call_raises_under_jit_while_tracing(case_id):
  case = CALL_CASES[case_id]
  est, batch, logp = _call(case)
  loss = jax.jit(lambda l, b, e: est(l, b, entropy=e)[0])
  with pytest.raises(ValueError) as err:
    loss(logp, batch, case.entropy)
  assert f"`{case.name}`" in str(err.value), str(err.value)
  # The error comes from tracing alone: nothing is lowered or compiled.
  with pytest.raises(ValueError):
    loss.trace(logp, batch, case.entropy)
  with pytest.raises(ValueError):
    jax.eval_shape(lambda l, b, e: est(l, b, entropy=e), logp, batch, case.entropy)


def test_closure_over_batch_raises_under_jit():
  """The form from the docs: `jax.jit(lambda l: est(l, batch))(bad_logp)`."""
  est, batch = presets.grpo(), _batch()
  with pytest.raises(ValueError, match="`logp`"):
    jax.jit(lambda l: est(l, batch))(_f(B, T, 2))
  with pytest.raises(ValueError, match="`batch.mask`"):
    jax.jit(lambda l: est(l, batch))(_f(B + 1, T))


@pytest.mark.parametrize("make,token_rewards,entropy", [
    (presets.sft, False, False), (presets.reinforce, False, False), (presets.rloo, False, False),
    (presets.gpomdp, True, False), (presets.ppo, False, False),
    (lambda: presets.ppo(advantage="gae"), True, False),
    (lambda: presets.ppo(entropy_coef=0.01), False, True),
    (lambda: presets.reinforce(entropy_coef=0.01), False, True),
    (presets.grpo, False, False), (lambda: presets.grpo("dr_grpo"), False, False),
    (lambda: presets.grpo(kl_beta=0.04), False, False), (presets.gspo, False, False),
    (presets.cispo, False, False)])
def test_valid_batch_passes(make, token_rewards, entropy):
  """The base batch is valid for the presets above, so each case fails for its own reason."""
  batch = _batch(rewards=_f(B, T)) if token_rewards else _batch()
  loss, _ = make()(LOGP, batch, entropy=_f(B, T) if entropy else None)
  assert jnp.isfinite(loss)


# ------------------------------------------------------------------------------------------------
# Option errors, raised when a preset or part is built.
# ------------------------------------------------------------------------------------------------

BUILD_CASES = {
    "grpo_loss_type": (lambda: presets.grpo("ppo"), "loss_type"),
    "reinforce_baseline": (lambda: presets.reinforce("mean"), "baseline"),
    "gpomdp_baseline": (lambda: presets.gpomdp(baseline="loo"), "baseline"),
    "returns_baseline": (lambda: advantage_parts.returns("median"), "baseline"),
    "grpo_scale": (lambda: presets.grpo(scale="std"), "scale"),
    "cispo_scale": (lambda: presets.cispo(scale="token"), "scale"),
    "grpo_kl_estimator": (lambda: presets.grpo(kl_beta=0.04, kl_estimator="k4"), "kl_estimator"),
    "grpo_kl_estimator_without_kl": (lambda: presets.grpo(kl_estimator="kl"), "kl_estimator"),
    "ppo_advantage": (lambda: presets.ppo(advantage="vtrace"), "advantage"),
    "grpo_eps_low_negative": (lambda: presets.grpo(eps_low=-0.2), "eps_low"),
    "grpo_eps_low_zero": (lambda: presets.grpo(eps_low=0.0), "eps_low"),
    "grpo_eps_high_negative": (lambda: presets.grpo(eps_high=-0.28), "eps_high"),
    "gspo_eps_low_negative": (lambda: presets.gspo(eps_low=-3e-4), "eps_low"),
    "gspo_token_eps_high_negative": (lambda: presets.gspo_token(eps_high=-4e-4), "eps_high"),
    "ppo_dual_clip_one": (lambda: presets.ppo(dual_clip=1.0), "dual_clip"),
    "ppo_dual_clip_below_one": (lambda: presets.ppo(dual_clip=0.5), "dual_clip"),
    "grpo_dual_clip_one": (lambda: presets.grpo(dual_clip=1.0), "dual_clip"),
    "grpo_ratio_cap_one": (lambda: presets.grpo(ratio_cap=1.0), "ratio_cap"),
    "cispo_ratio_max_negative": (lambda: presets.cispo(ratio_max=-1.0), "ratio_max"),
    "cispo_ratio_min_above_max": (lambda: presets.cispo(ratio_max=2.0, ratio_min=3.0), "ratio_min"),
    "token_clip_eps_negative": (lambda: reference_parts.token_clip(-0.1), "eps_low"),
    "pairwise_loss_type": (lambda: preference.PairwiseLoss("kto"), "loss_type"),
    "pairwise_beta_zero": (lambda: preference.dpo(beta=0.0), "beta"),
    "label_smoothing_half": (lambda: preference.dpo(label_smoothing=0.5), "label_smoothing"),
    "label_smoothing_negative": (lambda: preference.dpo(label_smoothing=-0.1), "label_smoothing"),
    "label_smoothing_above_one": (lambda: preference.dpo(label_smoothing=1.5), "label_smoothing"),
}


@pytest.mark.parametrize("case_id", sorted(BUILD_CASES))
def test_build_raises_value_error_naming_the_option(case_id):
  make, name = BUILD_CASES[case_id]
  with pytest.raises(ValueError) as err:
    make()
  assert f"`{name}`" in str(err.value), str(err.value)


def test_ppo_negative_eps_raises():
  # ppo checks `eps` itself; `eps_high` is checked by the clip part.
  with pytest.raises(ValueError, match="eps"):
    presets.ppo(eps=-0.2)
  with pytest.raises(ValueError, match="eps"):
    presets.ppo(eps=0.2, eps_high=-0.1)


@pytest.mark.parametrize("make,name", [
    (lambda: presets.ppo(eps=-0.2), "eps"),
    (lambda: presets.grpo(kl_beta=-0.04), "kl_beta"),
    (lambda: presets.ppo(entropy_coef=-0.01), "entropy_coef"),
], ids=["ppo_eps", "grpo_kl_beta", "ppo_entropy_coef"])
def test_preset_keyword_named_exactly(make, name):
  with pytest.raises(ValueError) as err:
    make()
  assert f"`{name}`" in str(err.value), str(err.value)


# ------------------------------------------------------------------------------------------------
# Pairwise losses: call-time shape errors.
# ------------------------------------------------------------------------------------------------


def _pair_batch(**fields) -> PairBatch:
  base = dict(chosen_mask=jnp.ones((B, T)), rejected_mask=jnp.ones((B, T + 1)),
              ref_chosen_logp=_f(B, T) - 1.0, ref_rejected_logp=_f(B, T + 1) - 1.0)
  base.update(fields)
  return PairBatch(**base)


PAIR_CASES = {
    "logp_chosen_rank_1": (_f(B), _f(B, T + 1), _pair_batch(), "logp_chosen"),
    "logp_rejected_int": (_f(B, T), jnp.zeros((B, T + 1), jnp.int32), _pair_batch(),
                          "logp_rejected"),
    "chosen_mask_shape": (_f(B, T), _f(B, T + 1), _pair_batch(chosen_mask=jnp.ones((B, T + 1))),
                          "batch.chosen_mask"),
    "ref_rejected_shape": (_f(B, T), _f(B, T + 1), _pair_batch(ref_rejected_logp=_f(B, T)),
                           "batch.ref_rejected_logp"),
    "rows_mismatch": (_f(B, T), _f(B + 1, T + 1),
                      _pair_batch(rejected_mask=jnp.ones((B + 1, T + 1)),
                                  ref_rejected_logp=_f(B + 1, T + 1)), "logp_rejected"),
}


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
@pytest.mark.parametrize("case_id", sorted(PAIR_CASES))
def test_pairwise_call_raises_naming_the_argument(case_id, loss_type):
  lw, ll, batch, name = PAIR_CASES[case_id]
  loss = preference.PairwiseLoss(loss_type)
  for fn in (loss, jax.jit(loss)):
    with pytest.raises(ValueError) as err:
      fn(lw, ll, batch)
    assert f"`{name}`" in str(err.value), str(err.value)


def test_pairwise_valid_batch_passes():
  loss, _ = preference.dpo()(_f(B, T), _f(B, T + 1), _pair_batch())
  assert jnp.isfinite(loss)
