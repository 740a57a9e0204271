"""EMPG advantages (pgx_lab/estimators/empg.py) against hand computations and a loop reference."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab import types
from pgx_lab.estimators import advantage_parts
from pgx_lab.estimators import empg


# jitted (one compilation per static configuration and shape; eager op-by-op dispatch is slower)
ADV_FN = jax.jit(empg.empg_advantages, static_argnames=(
    "k", "k_f", "zeta", "final_norm", "last_step_bonus", "eps", "num_steps"))


def reference(traj_adv, ent, step_ids, mask, k=1.0, k_f=1.0, zeta=0.1, final_norm="mean",
              last=0.0, eps=1e-8):
  """A plain-Python transcription of the method: list the steps, normalise, modulate, scatter."""
  traj_adv, ent, step_ids, mask = map(np.asarray, (traj_adv, ent, step_ids, mask))
  steps = {}                                   # (row, step) -> list of token entropies
  for i in range(ent.shape[0]):
    for j in range(ent.shape[1]):
      if mask[i, j]:
        steps.setdefault((i, int(step_ids[i, j])), []).append(float(ent[i, j]))
  out = np.zeros(ent.shape)
  if not steps:
    return out
  h = {key: np.mean(v) for key, v in steps.items()}
  lo, hi = min(h.values()), max(h.values())
  hn = {key: (v - lo) / (hi - lo + eps) for key, v in h.items()}
  mean_g = np.mean([math.exp(-k * v) for v in hn.values()])
  a_step = {}
  for (i, s), v in hn.items():
    f = math.exp(-k_f * hn[(i, s + 1)]) if (i, s + 1) in hn else last
    a_step[(i, s)] = traj_adv[i] * math.exp(-k * v) / (mean_g + eps) + zeta * f
  for i in range(ent.shape[0]):
    for j in range(ent.shape[1]):
      if mask[i, j]:
        out[i, j] = a_step[(i, int(step_ids[i, j]))]
  vals = out[mask > 0]
  if final_norm in ("mean", "mean_std"):
    out = np.where(mask > 0, out - vals.mean(), 0.0)
  if final_norm == "mean_std":
    out = out / (np.sqrt(np.sum(out ** 2) / vals.size) + eps)
  return out


# Row 0: two 2-token steps, entropies (1, 3) and (0.5, 0.5) -> H = 2.0, 0.5.
# Row 1: three steps, the last token padding -> H = 1.0, 2.0, 0.5.
ADV = jnp.array([1.0, -1.0])
ENT = jnp.array([[1.0, 3.0, 0.5, 0.5], [1.0, 2.0, 0.5, 9.0]])
IDS = jnp.array([[0, 0, 1, 1], [0, 1, 2, 2]], jnp.int32)
MASK = jnp.array([[1, 1, 1, 1], [1, 1, 1, 0]], jnp.float32)


def test_hand_computed_small_batch():
  # min H = 0.5, max H = 2.0: H~ row 0 = (1, 0), row 1 = (1/3, 1, 0).
  e1, e3 = math.exp(-1.0), math.exp(-1.0 / 3.0)
  mean_g = (e1 + 1.0 + e3 + e1 + 1.0) / 5.0
  # f of the next step: row 0 step 0 -> exp(0) = 1, row 1 step 0 -> e1, step 1 -> 1; last -> 0.
  a00 = 1.0 * e1 / mean_g + 0.1 * 1.0
  a01 = 1.0 * 1.0 / mean_g + 0.0
  a10 = -1.0 * e3 / mean_g + 0.1 * e1
  a11 = -1.0 * e1 / mean_g + 0.1 * 1.0
  a12 = -1.0 * 1.0 / mean_g + 0.0
  raw = np.array([[a00, a00, a01, a01], [a10, a11, a12, 0.0]])
  out = ADV_FN(ADV, ENT, IDS, MASK, final_norm="none")
  np.testing.assert_allclose(out, raw, rtol=1e-5, atol=1e-6)
  mean = raw[MASK > 0].mean()
  out = ADV_FN(ADV, ENT, IDS, MASK)
  np.testing.assert_allclose(out, np.where(MASK > 0, raw - mean, 0.0), rtol=1e-5, atol=1e-6)
  out = ADV_FN(ADV, ENT, IDS, MASK, final_norm="mean_std")
  centred = raw[MASK > 0] - mean
  np.testing.assert_allclose(out[MASK > 0], centred / centred.std(), rtol=1e-5, atol=1e-6)


def test_last_step_bonus_option_and_k_zeta():
  out = ADV_FN(ADV, ENT, IDS, MASK, k=2.0, k_f=0.5, zeta=0.3, final_norm="none",
                             last_step_bonus=0.7)
  ref = reference(ADV, ENT, IDS, MASK, k=2.0, k_f=0.5, zeta=0.3, final_norm="none", last=0.7)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def _random_batch(key, b=5, t=12, max_steps=4):
  k1, k2, k3, k4 = jax.random.split(key, 4)
  ent = jax.random.uniform(k1, (b, t), maxval=3.0)
  # sorted random step ids per row: variable number of steps and step lengths per row
  ids = jnp.sort(jax.random.randint(k2, (b, t), 0, max_steps), axis=1)
  ids = ids - ids[:, :1]
  lengths = jax.random.randint(k3, (b,), 1, t + 1)
  mask = (jnp.arange(t)[None] < lengths[:, None]).astype(jnp.float32)
  mask = mask.at[0].set(0.0)                       # one all-masked row
  adv = jax.random.normal(k4, (b,))
  return adv, ent, ids.astype(jnp.int32), mask


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("final_norm", ["none", "mean", "mean_std"])
def test_matches_loop_reference_variable_steps(seed, final_norm):
  adv, ent, ids, mask = _random_batch(jax.random.PRNGKey(seed))
  out = ADV_FN(adv, ent, ids, mask, final_norm=final_norm)
  ref = reference(adv, ent, ids, mask, final_norm=final_norm)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
  assert np.all(np.asarray(out)[0] == 0.0)          # all-masked row
  if final_norm != "none":
    assert abs(float(jnp.sum(out)) / float(jnp.sum(mask))) < 1e-5


def test_batch_mean_of_g_is_one():
  _, ent, ids, mask = _random_batch(jax.random.PRNGKey(3), b=6, t=16)
  h, exists = jax.jit(empg.step_entropies, static_argnums=3)(ent, ids, mask, 16)
  h_norm, g, _ = jax.jit(empg.step_modulation)(h, exists, k=1.7)
  assert float(jnp.sum(g) / jnp.sum(exists)) == pytest.approx(1.0, abs=1e-6)
  assert float(jnp.min(jnp.where(exists, h_norm, 1.0))) == pytest.approx(0.0, abs=1e-7)
  assert float(jnp.max(h_norm)) == pytest.approx(1.0, abs=1e-6)
  # confident steps (H~ = 0) get the largest g > 1
  assert float(jnp.max(g)) > 1.0


def test_single_token_steps():
  ent = jnp.array([[0.2, 1.0, 0.6]])
  ids = jnp.array([[0, 1, 2]], jnp.int32)
  mask = jnp.ones((1, 3))
  h, exists = empg.step_entropies(ent, ids, mask, 3)
  np.testing.assert_allclose(h, ent)
  hn = np.array([0.0, 1.0, 0.5])
  mean_g = np.mean(np.exp(-hn))
  raw = 2.0 * np.exp(-hn) / mean_g + 0.1 * np.array([np.exp(-1.0), np.exp(-0.5), 0.0])
  out = ADV_FN(jnp.array([2.0]), ent, ids, mask, final_norm="none")
  np.testing.assert_allclose(out[0], raw, rtol=1e-5)


def test_all_steps_equal_entropy_is_finite():
  ent = jnp.full((3, 4), 0.7)
  ids = jnp.array([[0, 0, 1, 1], [0, 1, 2, 3], [0, 0, 0, 0]], jnp.int32)
  mask = jnp.ones((3, 4))
  adv = jnp.array([1.0, -0.5, 0.0])
  out = ADV_FN(adv, ent, ids, mask, final_norm="none")
  assert np.all(np.isfinite(out))
  # H~ = 0 everywhere, g = 1 (up to eps), f = 1 for steps with a next step, 0 for last steps
  f = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]]) * 0.1
  np.testing.assert_allclose(out, adv[:, None] + f, rtol=1e-6, atol=1e-7)


def test_all_masked_batch_and_rows():
  adv, ent, ids, _ = _random_batch(jax.random.PRNGKey(4))
  for norm in empg.FINAL_NORMS:
    out = ADV_FN(adv, ent, ids, jnp.zeros_like(ent), final_norm=norm)
    assert np.all(np.asarray(out) == 0.0)
  # infinite entropy at padding does not leak
  ent = ENT.at[1, 3].set(jnp.inf)
  out = ADV_FN(ADV, ent, IDS, MASK, final_norm="none")
  np.testing.assert_allclose(out, ADV_FN(ADV, ENT, IDS, MASK, final_norm="none"))


def test_bad_input_raises_naming_argument():
  with pytest.raises(ValueError, match="traj_adv"):
    empg.empg_advantages(ADV[:1], ENT, IDS, MASK)
  with pytest.raises(ValueError, match="token_entropy"):
    empg.empg_advantages(ADV, ENT[0], IDS, MASK)
  with pytest.raises(ValueError, match="step_ids"):
    empg.empg_advantages(ADV, ENT, IDS.astype(jnp.float32), MASK)
  with pytest.raises(ValueError, match="mask"):
    empg.empg_advantages(ADV, ENT, IDS, MASK[:, :3])
  with pytest.raises(ValueError, match="final_norm"):
    empg.empg_advantages(ADV, ENT, IDS, MASK, final_norm="whiten")
  with pytest.raises(ValueError, match="`k`"):
    empg.empg_advantages(ADV, ENT, IDS, MASK, k=-1.0)
  with pytest.raises(ValueError, match="zeta"):
    empg.empg_advantages(ADV, ENT, IDS, MASK, zeta="0.1")
  with pytest.raises(ValueError, match="num_steps"):
    empg.empg_advantages(ADV, ENT, IDS, MASK, num_steps=0)
  with pytest.raises(ValueError, match="options"):
    empg.empg_part(advantage_parts.constant(), ENT, IDS, kappa=1.0)
  with pytest.raises(ValueError, match="base"):
    empg.empg_part(None, ENT, IDS)
  part = empg.empg_part(lambda batch: jnp.zeros((2, 4)), ENT, IDS)
  with pytest.raises(ValueError, match="base"):
    part(types.SequenceBatch(mask=MASK))


def test_jit_and_vmap():
  fn = lambda a, e, i, m: empg.empg_advantages(a, e, i, m, num_steps=4)
  eager = fn(ADV, ENT, IDS, MASK)
  np.testing.assert_allclose(jax.jit(fn)(ADV, ENT, IDS, MASK), eager, rtol=1e-6, atol=1e-7)
  batches = [_random_batch(jax.random.PRNGKey(s), b=3, t=6) for s in range(4)]
  stacked = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *batches)
  out = jax.jit(jax.vmap(fn))(*stacked)
  for n, batch in enumerate(batches):
    np.testing.assert_allclose(out[n], reference(*batch), rtol=1e-4, atol=1e-5)


def test_part_with_group_normalized_base():
  rewards = jnp.array([1.0, 0.0])
  batch = types.SequenceBatch(mask=MASK, rewards=rewards, group_ids=jnp.array([0, 0], jnp.int32))
  part = empg.empg_part(advantage_parts.group_normalized(), ENT, IDS, zeta=0.2)
  out = jax.jit(part)(batch)
  np.testing.assert_allclose(out, reference(ADV, ENT, IDS, MASK, zeta=0.2), rtol=1e-4, atol=1e-5)
