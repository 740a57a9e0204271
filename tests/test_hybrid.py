"""HPT's hybrid loss (pgx_lab/estimators/hybrid.py): hand-computed values, both switch branches in
one compiled step, gradients equal to GRPO's / NLL's on the right prompts, soft mix, degenerate
batches and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab import types
from pgx_lab.estimators import hybrid
from pgx_lab.estimators import presets

NEG_INF = -jnp.inf


def _batch(rewards, logp=None, old_logp=None):
  """4 rollouts, 2 groups of 2, T = 2; row 3 has one token."""
  mask = jnp.array([[1., 1.], [1., 1.], [1., 1.], [1., 0.]])
  old = jnp.full((4, 2), -0.7) if old_logp is None else old_logp
  return types.SequenceBatch(mask=mask, old_logp=old, rewards=jnp.asarray(rewards, jnp.float32),
                             group_ids=jnp.array([0, 0, 1, 1], jnp.int32))


DEMO_LOGP = jnp.array([[-0.5, -1.5, NEG_INF], [-1.0, NEG_INF, NEG_INF]])
DEMO_MASK = jnp.array([[1., 1., 0.], [1., 0., 0.]])


def test_switch_hand_computed():
  # group 0: both fail -> SFT on demo 0; group 1: rewards (1, 0) -> GRPO, advantages (+1, -1).
  batch = _batch([0., 0., 1., 0.])
  logp = batch.old_logp  # ratio 1: per-token loss -A
  loss, m = hybrid.hpt_loss(logp, batch, DEMO_LOGP, DEMO_MASK, sft_loss_coef=0.5)
  rl = (-(1.0 * 2) + 1.0 * 1) / 3.0            # tokens of rows 2 (A=+1, 2 tokens), 3 (A=-1, 1)
  sft = (0.5 + 1.5) / 2.0                      # demo 0 only
  np.testing.assert_allclose(loss, rl + 0.5 * sft, rtol=1e-5)
  np.testing.assert_allclose(m["rl_loss"], rl, rtol=1e-5)
  np.testing.assert_allclose(m["sft_loss"], sft, rtol=1e-6)
  np.testing.assert_allclose(m["sft_fraction"], 0.5)


def test_gate_counts_solved_rollouts():
  solved, rollouts = hybrid.group_counts(jnp.array([1., 1., 0., 1., 0.]),
                                         jnp.array([0, 0, 0, 1, 2]), jnp.ones((5, 3)), 3)
  np.testing.assert_allclose(solved, [2, 1, 0])
  np.testing.assert_allclose(rollouts, [3, 1, 1])
  a, b = hybrid.gate_weights(solved, rollouts, "switch", gate=1)   # LLaMA-style gate
  np.testing.assert_allclose(a, [1, 0, 0])
  np.testing.assert_allclose(b, [0, 1, 1])


def test_both_branches_in_one_compilation():
  traces = []

  @jax.jit
  def step(logp, batch, demo_logp):
    traces.append(1)
    return hybrid.hpt_loss(logp, batch, demo_logp, DEMO_MASK)

  expected = {(0., 0., 1., 0.): 0.5, (1., 0., 0., 1.): 0.0, (0., 0., 0., 0.): 1.0}
  for rewards, frac in expected.items():
    batch = _batch(list(rewards))
    loss, m = step(batch.old_logp, batch, DEMO_LOGP)
    assert np.isfinite(loss)
    np.testing.assert_allclose(m["sft_fraction"], frac)
  assert len(traces) == 1 and step._cache_size() == 1


def _grpo_subset_grad(logp, batch, rows):
  rows = np.asarray(rows)
  sub = types.SequenceBatch(mask=batch.mask[rows], old_logp=batch.old_logp[rows],
                            rewards=batch.rewards[rows],
                            group_ids=jnp.zeros(len(rows), jnp.int32))
  g = jax.grad(lambda lp: presets.grpo("bnpo")(lp, sub)[0])(logp[rows])
  return jnp.zeros_like(logp).at[rows].set(g)


def test_gradient_is_grpo_on_rl_prompts_and_nll_on_sft_prompts():
  key = jax.random.PRNGKey(0)
  old = -jnp.abs(jax.random.normal(key, (4, 2)))
  logp = old + 0.3 * jax.random.normal(jax.random.PRNGKey(1), (4, 2))   # some tokens clipped
  batch = _batch([0., 0., 1., 0.], old_logp=old)
  coef = 0.3
  f = lambda lp, dl: hybrid.hpt_loss(lp, batch, dl, DEMO_MASK, sft_loss_coef=coef)[0]
  g_logp, g_demo = jax.grad(f, argnums=(0, 1))(logp, DEMO_LOGP)
  np.testing.assert_allclose(g_logp, _grpo_subset_grad(logp, batch, [2, 3]), atol=1e-6)
  assert np.all(np.asarray(g_logp[:2]) == 0.0)      # the SFT prompt's rollouts are removed
  nll = lambda dl: -jnp.sum(jnp.where(DEMO_MASK[:1] > 0, dl[:1], 0.0)) / 2.0
  expected = coef * jax.grad(nll)(DEMO_LOGP)        # demo 1 (RL prompt) gets no gradient
  np.testing.assert_allclose(g_demo, expected, atol=1e-7)


def test_soft_linear_mix_hand_computed():
  batch = _batch([0., 0., 1., 0.])
  loss, m = hybrid.hpt_loss(batch.old_logp, batch, DEMO_LOGP, DEMO_MASK, sft_loss_coef=2.0,
                            mode="linear")
  # P = (0, 1/2): alpha = (0, 1/2), beta = (1, 1/2); group 0's rollouts removed.
  rl = 0.5 * (-(2.0) + 1.0) / 3.0
  sft = (1.0 * (0.5 + 1.5) + 0.5 * 1.0) / 3.0
  np.testing.assert_allclose(m["rl_loss"], rl, rtol=1e-5)
  np.testing.assert_allclose(m["sft_loss"], sft, rtol=1e-6)
  np.testing.assert_allclose(loss, rl + 2.0 * sft, rtol=1e-5)
  np.testing.assert_allclose(m["sft_fraction"], 1.0)
  # a callable (f, g) equal to the linear one gives the same loss
  loss2, _ = hybrid.hpt_loss(batch.old_logp, batch, DEMO_LOGP, DEMO_MASK, sft_loss_coef=2.0,
                             mode=lambda p: (p, 1.0 - p))
  np.testing.assert_allclose(loss2, loss, rtol=1e-6)


@pytest.mark.parametrize("rewards", [[1., 1., 1., 1.], [0., 0., 0., 0.], [1., 0., 0., 0.]])
def test_degenerate_batches_finite(rewards):
  batch = _batch(rewards).replace(mask=jnp.array([[1., 1.], [0., 0.], [1., 0.], [1., 0.]]))
  logp = jnp.where(batch.mask > 0, -0.4, NEG_INF)
  f = lambda lp, dl: hybrid.hpt_loss(lp, batch, dl, DEMO_MASK)
  (loss, m), grads = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(logp, DEMO_LOGP)
  assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads)
  assert all(np.all(np.isfinite(v)) for v in m.values())
  if sum(rewards) == 4:      # all solved: RL with zero advantages, no SFT
    np.testing.assert_allclose(loss, 0.0, atol=1e-6)
    np.testing.assert_allclose(m["sft_fraction"], 0.0)


def test_single_token_batch():
  batch = types.SequenceBatch(mask=jnp.ones((2, 1)), old_logp=jnp.full((2, 1), -1.0),
                              rewards=jnp.array([1., 0.]), group_ids=jnp.array([0, 1], jnp.int32))
  loss, m = hybrid.hpt_loss(batch.old_logp, batch, jnp.array([[-2.0], [-3.0]]), jnp.ones((2, 1)))
  # group 0 solved, one rollout: advantage 0; group 1 failed: SFT on demo 1, NLL 3.
  np.testing.assert_allclose(loss, 3.0, rtol=1e-6)
  np.testing.assert_allclose(m["sft_fraction"], 0.5)


def test_bad_input():
  batch = _batch([0., 0., 1., 0.])
  lp = batch.old_logp
  with pytest.raises(ValueError, match="demo_mask"):
    hybrid.hpt_loss(lp, batch, DEMO_LOGP, DEMO_MASK[:, :2])
  with pytest.raises(ValueError, match="batch.rewards"):
    hybrid.hpt_loss(lp, batch.replace(rewards=None), DEMO_LOGP, DEMO_MASK)
  with pytest.raises(ValueError, match="batch.rewards"):
    hybrid.hpt_loss(lp, batch.replace(rewards=jnp.zeros((4, 2))), DEMO_LOGP, DEMO_MASK)
  with pytest.raises(ValueError, match="batch.group_ids"):
    hybrid.hpt_loss(lp, batch.replace(group_ids=None), DEMO_LOGP, DEMO_MASK)
  with pytest.raises(ValueError, match="mode"):
    hybrid.hpt_loss(lp, batch, DEMO_LOGP, DEMO_MASK, mode="cosine")
  with pytest.raises(ValueError, match="gate"):
    hybrid.hpt_loss(lp, batch, DEMO_LOGP, DEMO_MASK, gate=-1)
  with pytest.raises(ValueError, match="gate"):
    hybrid.hpt_loss(lp, batch, DEMO_LOGP, DEMO_MASK, gate=True)
  with pytest.raises(ValueError, match="sft_loss_coef"):
    hybrid.hpt_loss(lp, batch, DEMO_LOGP, DEMO_MASK, sft_loss_coef=-0.1)
  with pytest.raises(ValueError, match="demo_logp"):
    hybrid.hpt_loss(lp, batch, jnp.zeros((2, 3), jnp.int32), DEMO_MASK)
  with pytest.raises(ValueError, match="logp"):
    hybrid.hpt_loss(lp[:, :1], batch, DEMO_LOGP, DEMO_MASK)
  with pytest.raises(ValueError, match="rl_estimator"):
    hybrid.hpt_loss(lp, batch, DEMO_LOGP, DEMO_MASK, rl_estimator="grpo")
