"""RPO = DPO + eta * beta * SFT NLL of the chosen responses, as an option of the pairwise loss.

Same pair batch as tests/test_pairwise.py (B = 2, T = 3, -inf under padding):
  chosen mask [[1, 1, 0], [1, 0, 0]], logp_chosen [[-1, -2, pad], [-0.5, pad, pad]]
  summed chosen log-probs [-3, -0.5]: "sum" NLL = (3 + 0.5) / 2 = 1.75
  chosen tokens -1, -2, -0.5:          "mean" NLL = 3.5 / 3 = 7/6
  h = [1.5, -1]; DPO (beta 0.1) = (log(1 + e^-0.15) + log(1 + e^0.1)) / 2 = 0.68267685
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab import PairBatch
from pgx_lab.estimators.preference import pairwise

NEG_INF = -np.inf
DPO = (0.62095705 + 0.74439666) / 2


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def _pair():
  batch = PairBatch(
      chosen_mask=_f32([[1, 1, 0], [1, 0, 0]]),
      rejected_mask=_f32([[1, 1, 1], [1, 1, 0]]),
      ref_chosen_logp=_f32([[-1.5, -2.5, NEG_INF], [-1.0, NEG_INF, NEG_INF]]),
      ref_rejected_logp=_f32([[-1.0, -1.0, -0.5], [-1.0, -1.5, NEG_INF]]))
  return (_f32([[-1.0, -2.0, NEG_INF], [-0.5, NEG_INF, NEG_INF]]),
          _f32([[-1.0, -1.0, -1.0], [-0.5, -0.5, NEG_INF]]), batch)


def _run(loss_fn):
  lc, lr, batch = _pair()
  f = jax.jit(jax.value_and_grad(lambda a, b: loss_fn(a, b, batch), argnums=(0, 1), has_aux=True))
  (loss, metrics), grads = f(lc, lr)
  return loss, metrics, grads


@pytest.mark.parametrize("sft_norm,nll", [("sum", 1.75), ("mean", 7.0 / 6.0)])
def test_rpo_loss_by_hand(sft_norm, nll):
  # eta 2, beta 0.1: DPO + 0.2 * NLL
  loss, metrics, _ = _run(pairwise.rpo(beta=0.1, eta=2.0, sft_norm=sft_norm))
  np.testing.assert_allclose(loss, DPO + 0.2 * nll, rtol=1e-6)
  np.testing.assert_allclose(metrics["sft_nll"], nll, rtol=1e-6)
  np.testing.assert_allclose(pairwise.sft_nll(_pair()[0], _pair()[2].chosen_mask, sft_norm), nll,
                             rtol=1e-6)


@pytest.mark.parametrize("sft_norm,extra", [
    ("sum", [[-0.1, -0.1, 0.0], [-0.1, 0.0, 0.0]]),          # -eta beta / B on each chosen token
    ("mean", [[-0.2 / 3, -0.2 / 3, 0.0], [-0.2 / 3, 0.0, 0.0]]),   # -eta beta / (3 tokens)
])
def test_rpo_gradient_adds_the_sft_gradient_on_chosen_tokens_only(sft_norm, extra):
  _, _, (gc, gr) = _run(pairwise.rpo(beta=0.1, eta=2.0, sft_norm=sft_norm))
  _, _, (gc_dpo, gr_dpo) = _run(pairwise.dpo(beta=0.1))
  # DPO's own gradient by hand: -(beta / B) sigmoid(-beta h_i) on chosen tokens.
  sig = np.array([1 / (1 + math.exp(0.1 * x)) for x in (1.5, -1.0)])
  mask = np.asarray(_pair()[2].chosen_mask)
  np.testing.assert_allclose(gc_dpo, -0.05 * sig[:, None] * mask, rtol=1e-5)
  np.testing.assert_allclose(gc, np.asarray(gc_dpo) + np.array(extra), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(gr, gr_dpo, rtol=1e-6)


def test_trl_rpo_alpha_is_token_mean_with_eta_alpha_over_beta():
  # TRL: loss = dpo + rpo_alpha * token-mean NLL of chosen. alpha = 0.3, beta = 0.1 -> eta = 3.
  loss, _, _ = _run(pairwise.rpo(beta=0.1, eta=0.3 / 0.1, sft_norm="mean"))
  np.testing.assert_allclose(loss, DPO + 0.3 * 7.0 / 6.0, rtol=1e-6)


def test_sft_weight_composes_with_other_options():
  # cDPO label smoothing + SFT term; IPO + SFT term (per_pair stays the preference part).
  s = 0.2
  cdpo = (0.8 * math.log1p(math.exp(-0.15)) + 0.2 * math.log1p(math.exp(0.15))
          + 0.8 * math.log1p(math.exp(0.1)) + 0.2 * math.log1p(math.exp(-0.1))) / 2
  loss, _, _ = _run(pairwise.PairwiseLoss("sigmoid", 0.1, False, s, 1.0, "sum"))
  np.testing.assert_allclose(loss, cdpo + 0.1 * 1.75, rtol=1e-6)
  ipo = pairwise.PairwiseLoss("ipo", 0.1, sft_weight=1.0)
  loss, _, _ = _run(ipo)
  np.testing.assert_allclose(loss, 24.125 + 0.1 * 1.75, rtol=1e-6)
  np.testing.assert_allclose(ipo.per_pair(*_pair()), [12.25, 36.0], rtol=1e-6)


def test_no_sft_weight_is_plain_dpo_without_the_metric():
  loss, metrics, _ = _run(pairwise.dpo(beta=0.1))
  np.testing.assert_allclose(loss, DPO, rtol=1e-6)
  assert "sft_nll" not in metrics


def test_all_masked_chosen_rows_stay_finite():
  lc, lr, batch = _pair()
  batch = batch.replace(chosen_mask=jnp.zeros_like(batch.chosen_mask))
  for norm in ("sum", "mean"):
    f = jax.value_and_grad(lambda a: pairwise.rpo(0.1, 1.0, norm)(a, lr, batch)[0])
    loss, g = f(lc)
    assert np.isfinite(float(loss)) and np.all(np.asarray(g) == 0)


@pytest.mark.parametrize("kwargs,name", [
    (dict(eta=0.0), "eta"), (dict(eta=-1.0), "eta"), (dict(sft_norm="token"), "sft_norm"),
    (dict(beta=0.0), "beta")])
def test_bad_rpo_options_raise_value_error(kwargs, name):
  with pytest.raises(ValueError, match=name):
    pairwise.rpo(**kwargs)


def test_bad_sft_fields_raise_value_error():
  with pytest.raises(ValueError, match="sft_weight"):
    pairwise.PairwiseLoss(sft_weight=-0.5)
  with pytest.raises(ValueError, match="sft_norm"):
    pairwise.PairwiseLoss(sft_norm="max")
  with pytest.raises(ValueError, match="sft_norm"):
    pairwise.sft_nll(_pair()[0], _pair()[2].chosen_mask, "median")
