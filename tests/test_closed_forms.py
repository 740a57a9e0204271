"""The estimators' maths against closed forms.

Four families of checks:
1. Monte Carlo on a softmax K-armed bandit: the mean over many batches of -grad(loss) equals the
   exact gradient of J(theta) = sum_a pi(a) rbar(a), namely pi * (rbar - pi . rbar), times the factor
   that each baseline is known to introduce ((B - 1) / B for the batch mean, (G - 1) / G for the
   group mean, 1 for none / leave-one-out / a constant baseline).
2. Exact enumeration (no sampling) of every joint outcome of a group of G = 3 samples: the
   expected GRPO gradient computed through the library equals a hand-written numpy closed form,
   RLOO's expectation equals grad J, the group-mean baseline's equals (G - 1) / G grad J.
3. Ratio-1 invariants: with old_logp equal to logp, every clipped / importance-weighted estimator
   (PPO, GRPO's loss types, GSPO, GSPO-token, CISPO) has the on-policy gradient of its advantage and
   aggregation, which is itself checked against the closed form d loss / d logp.
4. GPOMDP on a tiny tabular MDP: exact J by enumerating all trajectories (jax.grad gives the exact
   gradient), the exact expectation of the per-trajectory estimator by enumeration, Monte Carlo
   means within 5 standard errors, and GPOMDP's variance below REINFORCE's.

Statistical tolerances (`assert_mean_matches`): for n i.i.d. per-batch gradients the standard error
of the mean of one coordinate is std / sqrt(n); the mean is required to lie within 5 standard errors
of the closed form (a two-sided 5-sigma band: a false alarm has probability ~6e-7 per coordinate,
and the seeds are fixed, so the tests are deterministic) plus an absolute floor of 1e-6 for float32
round-off. Each check also asserts that its standard error is small next to the gradient, so the
band is tight enough to fail, and the factor checks assert that the wrong factor is rejected.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab import SequenceBatch
from pgx_lab.estimators import Estimator
from pgx_lab.estimators import advantage_parts as adv
from pgx_lab.estimators import advantages as adv_lib
from pgx_lab.estimators import aggregation as agg
from pgx_lab.estimators import presets
from pgx_lab.estimators import reference_parts as ref

sg = jax.lax.stop_gradient

N_SE = 5.0       # width of the acceptance band in standard errors (see the module docstring)
ABS_FLOOR = 1e-6  # float32 round-off floor added to the band


def assert_mean_matches(samples, expected, *, n_se=N_SE, floor=ABS_FLOOR, max_rel_se=0.05):
  """Asserts mean(samples) is within n_se standard errors (+ floor) of `expected`, per coordinate.

  Also asserts the test has power: the largest standard error is below `max_rel_se` times the
  largest |expected| coordinate. Returns (mean, standard error), in float64.
  """
  x = np.asarray(samples, np.float64).reshape(samples.shape[0], -1)
  expected = np.asarray(expected, np.float64).reshape(-1)
  n = x.shape[0]
  mean = x.mean(0)
  se = x.std(0, ddof=1) / np.sqrt(n)
  assert se.max() < max_rel_se * np.abs(expected).max(), (
      f"test has no power: se {se} vs expected {expected}")
  err = np.abs(mean - expected)
  tol = n_se * se + floor
  assert np.all(err <= tol), (
      f"MC mean {mean} != expected {expected}: |err| {err} > {n_se} se + {floor} = {tol}")
  return mean, se


def assert_rejects(mean, se, wrong, *, n_se=N_SE):
  """Asserts some coordinate of `mean` lies more than n_se standard errors from `wrong`."""
  wrong = np.asarray(wrong, np.float64).reshape(-1)
  assert np.any(np.abs(mean - wrong) > n_se * se), (
      f"the test cannot tell the mean {mean} from the wrong value {wrong} (se {se})")


# --------------------------------------------------------------------------------------------
# 1. Softmax K-armed bandit, Monte Carlo.
# --------------------------------------------------------------------------------------------

THETA = np.array([0.5, -0.3, 0.1, -0.8], np.float32)     # logits of pi
R_BASE = np.array([1.0, 0.0, 0.6, -0.4], np.float32)     # deterministic part of each arm's reward
NOISE_P = np.array([0.2, 0.5, 0.8, 0.3], np.float32)     # P(bonus) per arm
NOISE_SCALE = 0.5                                          # reward = R_BASE[a] + 0.5 * Bernoulli
R_MEAN = R_BASE + NOISE_SCALE * NOISE_P                   # rbar(a) = E[reward | a]
ADV_SHIFT = 0.3                                            # constant baseline for the PPO test


def softmax_np(theta):
  z = np.exp(theta - theta.max())
  return z / z.sum()


def bandit_grad_j(theta=THETA, r_mean=R_MEAN):
  """grad_theta sum_a pi(a) rbar(a) = pi * (rbar - pi . rbar) (float64)."""
  pi = softmax_np(np.asarray(theta, np.float64))
  r = np.asarray(r_mean, np.float64)
  return pi * (r - pi @ r)


def bandit_mc_grads(estimators, *, n_groups, group_size, n_batches, seed):
  """-grad_theta loss of each estimator, for `n_batches` batches of n_groups * group_size pulls.

  Each sample is a length-1 sequence: logp[B, 1] = log_softmax(theta)[a], mask ones,
  old_logp = sg(logp) (ratio 1), advantages = reward - ADV_SHIFT (for the precomputed part).
  All estimators see the same samples; one jit (vmap over keys) per call. Returns
  [len(estimators), n_batches, K].
  """
  b = n_groups * group_size
  theta = jnp.asarray(THETA)
  gids = jnp.repeat(jnp.arange(n_groups, dtype=jnp.int32), group_size)

  def one(key):
    k_arm, k_noise = jax.random.split(key)
    a = jax.random.categorical(k_arm, theta, shape=(b,))
    bonus = jax.random.bernoulli(k_noise, jnp.asarray(NOISE_P)[a]).astype(jnp.float32)
    rewards = jnp.asarray(R_BASE)[a] + NOISE_SCALE * bonus

    def neg_loss(th, estimator):
      logp = jax.nn.log_softmax(th)[a][:, None]
      batch = SequenceBatch(mask=jnp.ones((b, 1), jnp.float32), old_logp=sg(logp),
                            rewards=rewards, group_ids=gids,
                            advantages=rewards - ADV_SHIFT)
      return -estimator(logp, batch)[0]

    return jnp.stack([jax.grad(neg_loss)(theta, est) for est in estimators])

  keys = jax.random.split(jax.random.PRNGKey(seed), n_batches)
  return np.moveaxis(np.asarray(jax.jit(jax.vmap(one))(keys)), 1, 0)


N_BATCHES = 30_000

# (name, estimator factory, factor(B, G)): E[-grad loss] = factor * grad J.
# With T = 1 and an all-ones mask every aggregation (token_mean, seq_mean_token_mean,
# seq_mean_token_sum, token_sum_norm = sum / (B * 1)) is the plain mean over the B samples, so the
# factor comes from the baseline alone:
#   none / loo / precomputed (reward - constant): 1 (unbiased);
#   batch mean over all B samples (sample i's own reward included): (B - 1) / B;
#   group mean (Dr.GRPO's advantage, GRPO / BNPO / CISPO with scale="none"): (G - 1) / G.
_ONE = lambda b, g: 1.0
_BATCH = lambda b, g: (b - 1) / b
_GROUP = lambda b, g: (g - 1) / g
ON_POLICY_CASES = {
    "reinforce_none": (lambda: presets.reinforce("none"), _ONE),
    "reinforce_loo": (lambda: presets.reinforce("loo"), _ONE),
    "rloo": (presets.rloo, _ONE),
    "reinforce_batch": (lambda: presets.reinforce("batch"), _BATCH),
    "reinforce_group": (lambda: presets.reinforce("group"), _GROUP),
    "grpo_scale_none": (lambda: presets.grpo("grpo", scale="none"), _GROUP),
    "bnpo_scale_none": (lambda: presets.grpo("bnpo", scale="none"), _GROUP),
    "dr_grpo": (lambda: presets.grpo("dr_grpo"), _GROUP),
    "ppo_precomputed": (lambda: presets.ppo(whiten=False), _ONE),
    "cispo_scale_none": (lambda: presets.cispo(scale="none"), _GROUP),
}
# Batch layouts (n_groups, G): every estimator at B = 8 in groups of 4, and the baselines whose
# factor depends on B or G again at a second layout.
LAYOUTS = {(2, 4): tuple(ON_POLICY_CASES),
           (1, 2): ("reinforce_batch", "reinforce_group", "rloo")}
_MC_CACHE = {}


def _bandit_mc(layout):
  """All of a layout's estimators on one set of samples, computed once per test session."""
  if layout not in _MC_CACHE:
    names = LAYOUTS[layout]
    grads = bandit_mc_grads([ON_POLICY_CASES[n][0]() for n in names], n_groups=layout[0],
                            group_size=layout[1], n_batches=N_BATCHES, seed=sum(layout))
    _MC_CACHE[layout] = dict(zip(names, grads))
  return _MC_CACHE[layout]


@pytest.mark.parametrize("layout,name", [(lay, n) for lay, ns in LAYOUTS.items() for n in ns],
                         ids=[f"{n}-{lay[0]}x{lay[1]}" for lay, ns in LAYOUTS.items() for n in ns])
def test_bandit_mc_mean_is_factor_times_exact_gradient(layout, name):
  n_groups, group_size = layout
  k = ON_POLICY_CASES[name][1](n_groups * group_size, group_size)
  exact = bandit_grad_j()
  mean, se = assert_mean_matches(_bandit_mc(layout)[name], k * exact)
  if k != 1.0:
    # The band is narrow enough to tell the biased factor from an unbiased estimator.
    assert_rejects(mean, se, exact)


# --------------------------------------------------------------------------------------------
# 2. Exact enumeration of a group of G = 3 samples on a K = 3 armed bandit.
# --------------------------------------------------------------------------------------------

E_THETA = np.array([0.3, -0.2, 0.6], np.float32)
# Rewards are dyadic (multiples of 1/4) so float32 group means are exact and a constant group has
# zero centred reward exactly (see the report on `advantages.group_normalized` round-off).
E_R_BASE = np.array([1.0, 0.0, 0.25], np.float32)
E_NOISE_P = np.array([0.25, 0.5, 0.75])
E_NOISE_SCALE = 0.5
E_R_MEAN = E_R_BASE + E_NOISE_SCALE * E_NOISE_P
E_G = 3


def _enumerate_group(theta=E_THETA, group_size=E_G):
  """Every joint outcome of a group: outcome o = 2 * arm + bonus bit; returns arrays + probs."""
  k = theta.shape[0]
  pi = softmax_np(np.asarray(theta, np.float64))
  tuples = np.array(list(itertools.product(range(2 * k), repeat=group_size)), np.int32)
  arms, bits = tuples // 2, tuples % 2
  p_bit = np.where(bits == 1, E_NOISE_P[arms], 1.0 - E_NOISE_P[arms])
  probs = np.prod(pi[arms] * p_bit, axis=1)
  rewards = (E_R_BASE[arms] + E_NOISE_SCALE * bits).astype(np.float32)
  assert abs(probs.sum() - 1.0) < 1e-12
  return arms, rewards, probs, pi


def exact_expected_grad(estimator, theta=E_THETA, group_size=E_G):
  """sum over all joint outcomes of P(outcome) * (-grad_theta loss(outcome)), float64."""
  arms, rewards, probs, _ = _enumerate_group(theta, group_size)
  th = jnp.asarray(theta)

  def one(a, r):
    def neg_loss(t):
      logp = jax.nn.log_softmax(t)[a][:, None]
      batch = SequenceBatch(mask=jnp.ones((group_size, 1), jnp.float32), old_logp=sg(logp),
                            rewards=r, group_ids=jnp.zeros((group_size,), jnp.int32))
      return -estimator(logp, batch)[0]
    return jax.grad(neg_loss)(th)

  grads = np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(arms), jnp.asarray(rewards)), np.float64)
  return probs @ grads


def grpo_closed_form(unbiased_std, eps=1e-6, theta=E_THETA, group_size=E_G):
  """Hand-written E[(1/G) sum_i A_i grad log pi(a_i)], A_i = (R_i - mean R) / (std R + eps)."""
  arms, rewards, probs, pi = _enumerate_group(theta, group_size)
  total = np.zeros_like(pi)
  eye = np.eye(pi.shape[0])
  for a, r, p in zip(arms, rewards.astype(np.float64), probs):
    std = r.std(ddof=1 if unbiased_std else 0)
    adv_i = (r - r.mean()) / (std + eps)
    score = eye[a] - pi                      # grad_theta log softmax(theta)[a_i], [G, K]
    total += p * (adv_i @ score) / group_size
  return total


@pytest.mark.parametrize("loss_type,unbiased_std", [
    ("grpo", False), ("grpo", True), ("bnpo", False), ("dapo", False)])
def test_enumeration_grpo_std_normalised_matches_hand_closed_form(loss_type, unbiased_std):
  # T = 1, mask ones: seq_mean_token_mean and token_mean both divide the sum by B = G.
  est = presets.grpo(loss_type, scale="group", unbiased_std=unbiased_std)
  got = exact_expected_grad(est)
  want = grpo_closed_form(unbiased_std)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # GRPO's std scaling makes it a different vector from grad J (the comparison is not vacuous).
  assert np.abs(got - bandit_grad_j(E_THETA, E_R_MEAN)).max() > 1e-2


def test_enumeration_dr_grpo_group_std_scale_equals_grpo_at_t1():
  """dr_grpo's token_sum_norm divides by B * T = B at T = 1: the same as GRPO's mean."""
  got = exact_expected_grad(presets.grpo("dr_grpo", scale="group"))
  np.testing.assert_allclose(got, grpo_closed_form(False), rtol=1e-5, atol=1e-6)


_ENUM_BASELINES = [
    ("none", lambda: presets.reinforce("none"), 1.0),
    ("loo", lambda: presets.reinforce("loo"), 1.0),
    ("rloo", presets.rloo, 1.0),
    ("group", lambda: presets.reinforce("group"), (E_G - 1) / E_G),
    ("batch", lambda: presets.reinforce("batch"), (E_G - 1) / E_G),   # one group: B = G
    ("dr_grpo", lambda: presets.grpo("dr_grpo"), (E_G - 1) / E_G),
    ("grpo_scale_none", lambda: presets.grpo("grpo", scale="none"), (E_G - 1) / E_G),
]


@pytest.mark.parametrize("name,make,factor", _ENUM_BASELINES, ids=[c[0] for c in _ENUM_BASELINES])
def test_enumeration_baselines_exact_factor(name, make, factor):
  got = exact_expected_grad(make())
  exact = bandit_grad_j(E_THETA, E_R_MEAN)
  np.testing.assert_allclose(got, factor * exact, rtol=1e-5, atol=1e-6)


def test_enumeration_grad_j_closed_form_matches_autodiff():
  """The bandit closed form pi * (rbar - pi . rbar) itself, against jax.grad of J."""
  j = lambda t: jnp.sum(jax.nn.softmax(t) * jnp.asarray(E_R_MEAN, jnp.float32))
  np.testing.assert_allclose(jax.grad(j)(jnp.asarray(E_THETA)),
                             bandit_grad_j(E_THETA, E_R_MEAN), rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------
# 3. Ratio-1 invariants on random padded sequences.
# --------------------------------------------------------------------------------------------

RB, RT = 9, 6


def _random_batch(seed=0, with_empty_row=True):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, RT + 1, size=RB)
  lengths[RT % RB] = RT                         # one full-length row
  if with_empty_row:
    lengths[-1] = 0                             # one fully padded row
  mask = (np.arange(RT)[None, :] < lengths[:, None]).astype(np.float32)
  logp = np.log(rng.uniform(0.05, 0.95, size=(RB, RT))).astype(np.float32)
  logp = np.where(mask > 0, logp, -np.inf).astype(np.float32)   # padding may be -inf
  group_ids = np.array([0, 0, 0, 3, 3, 3, 5, 5, 5], np.int32)
  rewards = rng.normal(size=RB).astype(np.float32)
  ref_logp = np.where(mask > 0, logp + 0.1 * rng.normal(size=(RB, RT)), 0.0).astype(np.float32)
  token_adv = rng.normal(size=(RB, RT)).astype(np.float32)
  return dict(mask=mask, logp=logp, group_ids=group_ids, rewards=rewards, ref_logp=ref_logp,
              token_adv=token_adv, lengths=lengths)


def _grad_wrt_logp(estimator, data, advantages=None):
  """d loss / d logp at logp with old_logp equal to logp in value (a constant)."""
  logp = jnp.asarray(data["logp"])
  batch = SequenceBatch(mask=jnp.asarray(data["mask"]), old_logp=jnp.asarray(data["logp"]),
                        ref_logp=jnp.asarray(data["ref_logp"]),
                        rewards=jnp.asarray(data["rewards"]),
                        group_ids=jnp.asarray(data["group_ids"]),
                        advantages=None if advantages is None else jnp.asarray(advantages))
  g = jax.grad(lambda lp: estimator(lp, batch)[0])(logp)
  g = np.asarray(g)
  assert np.all(np.isfinite(g)), f"{estimator.name}: non-finite gradient {g}"
  return g


def _np_group_adv(rewards, group_ids, valid, scale):
  """GRPO's advantage in numpy (population std, eps added to the std)."""
  out = np.zeros_like(rewards, dtype=np.float64)
  r = rewards.astype(np.float64)
  for g in np.unique(group_ids):
    idx = np.where((group_ids == g) & valid)[0]
    if idx.size == 0:
      continue
    c = r[idx] - r[idx].mean()
    out[idx] = c / (r[idx].std() + 1e-6) if scale == "group" else c
  return out


def _np_whiten(x, mask):
  m = mask.astype(np.float64)
  n = m.sum()
  mean = (x * m).sum() / n
  var = (((x - mean) * m) ** 2).sum() / n
  return (x - mean) / np.sqrt(var + 1e-8) * m


def _np_onpolicy_grad(adv_tokens, mask, aggregate):
  """Closed form d/d logp of aggregate(-A * logp * m): -A m / (normaliser)."""
  m = mask.astype(np.float64)
  b, t = m.shape
  if aggregate == "token_mean":
    return -adv_tokens * m / m.sum()
  if aggregate == "seq_mean_token_mean":
    lengths = np.maximum(m.sum(1, keepdims=True), 1.0)
    return -adv_tokens * m / (b * lengths)
  if aggregate == "token_sum_norm":
    return -adv_tokens * m / (b * t)
  raise ValueError(aggregate)


def _ratio1_cases(data):
  """(name, off-policy preset, on-policy twin built from named parts, advantages, closed form)."""
  mask, valid = data["mask"], data["lengths"] > 0
  seq = lambda a: np.broadcast_to(a[:, None], mask.shape) * mask
  adv_group = seq(_np_group_adv(data["rewards"], data["group_ids"], valid, "group"))
  adv_none = seq(_np_group_adv(data["rewards"], data["group_ids"], valid, "none"))
  tok = data["token_adv"].astype(np.float64) * mask
  on = ref.on_policy()
  grp = adv.group_normalized("group")
  return [
      ("ppo", presets.ppo(whiten=False, eps=0.2),
       Estimator(advantage=adv.precomputed(), reference=on, aggregate=agg.token_mean),
       data["token_adv"], _np_onpolicy_grad(tok, mask, "token_mean")),
      ("ppo_whiten_dualclip_clip_higher", presets.ppo(eps=0.1, eps_high=0.3, dual_clip=3.0),
       Estimator(advantage=adv.whitened(adv.precomputed()), reference=on,
                 aggregate=agg.token_mean),
       data["token_adv"], _np_onpolicy_grad(_np_whiten(tok, mask), mask, "token_mean")),
      ("grpo", presets.grpo("grpo"),
       Estimator(advantage=grp, reference=on, aggregate=agg.seq_mean_token_mean),
       None, _np_onpolicy_grad(adv_group, mask, "seq_mean_token_mean")),
      ("bnpo", presets.grpo("bnpo"),
       Estimator(advantage=grp, reference=on, aggregate=agg.token_mean),
       None, _np_onpolicy_grad(adv_group, mask, "token_mean")),
      ("dapo", presets.grpo("dapo", eps_high=0.28),
       Estimator(advantage=grp, reference=on, aggregate=agg.token_mean),
       None, _np_onpolicy_grad(adv_group, mask, "token_mean")),
      ("dr_grpo", presets.grpo("dr_grpo"),
       Estimator(advantage=adv.group_normalized("none"), reference=on,
                 aggregate=agg.token_sum_norm),
       None, _np_onpolicy_grad(adv_none, mask, "token_sum_norm")),
      ("grpo_ratio_cap", presets.grpo("grpo", ratio_cap=2.0, dual_clip=3.0),
       Estimator(advantage=grp, reference=on, aggregate=agg.seq_mean_token_mean),
       None, _np_onpolicy_grad(adv_group, mask, "seq_mean_token_mean")),
      ("cispo", presets.cispo(),
       Estimator(advantage=grp, reference=on, aggregate=agg.token_mean),
       None, _np_onpolicy_grad(adv_group, mask, "token_mean")),
      ("gspo", presets.gspo(),
       Estimator(advantage=grp, reference=on, aggregate=agg.seq_mean_token_mean),
       None, _np_onpolicy_grad(adv_group, mask, "seq_mean_token_mean")),
      ("gspo_token", presets.gspo_token(),
       Estimator(advantage=grp, reference=on, aggregate=agg.seq_mean_token_mean),
       None, _np_onpolicy_grad(adv_group, mask, "seq_mean_token_mean")),
      ("gspo_token_per_token_adv", presets.gspo_token(advantage=adv.precomputed()),
       Estimator(advantage=adv.precomputed(), reference=on, aggregate=agg.seq_mean_token_mean),
       data["token_adv"], _np_onpolicy_grad(tok, mask, "seq_mean_token_mean")),
  ]


_CASE_NAMES = [c[0] for c in _ratio1_cases(_random_batch())]


@pytest.mark.parametrize("case", _CASE_NAMES)
def test_ratio_one_equals_on_policy_and_closed_form(case):
  # Padded rows of several lengths, one fully padded row, -inf log-probs at the padding.
  data = _random_batch(seed=_CASE_NAMES.index(case))
  name, off, on, advantages, closed = {c[0]: c for c in _ratio1_cases(data)}[case]
  g_off = _grad_wrt_logp(off, data, advantages)
  g_on = _grad_wrt_logp(on, data, advantages)
  np.testing.assert_allclose(g_off, g_on, rtol=0, atol=1e-6, err_msg=f"{name}: ratio-1 != on-policy")
  np.testing.assert_allclose(g_on, closed, rtol=1e-5, atol=1e-7,
                             err_msg=f"{name}: on-policy != closed form")
  assert np.abs(closed).max() > 1e-3          # not vacuous
  # The on-policy twin is also what swapping only the reference part gives.
  g_swap = _grad_wrt_logp(off.replace(reference=ref.on_policy()), data, advantages)
  np.testing.assert_allclose(g_off, g_swap, rtol=0, atol=1e-6)


def test_ratio_one_kl_penalty_unchanged_by_reference_part():
  """With a k3 KL penalty the ratio-1 gradient still equals the on-policy twin's (same penalty)."""
  data = _random_batch(seed=11)
  est = presets.grpo("grpo", kl_beta=0.04)
  g_off = _grad_wrt_logp(est, data)
  g_on = _grad_wrt_logp(est.replace(reference=ref.on_policy()), data)
  np.testing.assert_allclose(g_off, g_on, rtol=0, atol=1e-6)
  g_no_kl = _grad_wrt_logp(presets.grpo("grpo"), data)
  assert np.abs(g_off - g_no_kl).max() > 1e-4   # the penalty does contribute


def test_gspo_sequence_ratio_gradient_is_length_normalised():
  """GSPO at ratio 1: d s_i / d logp_t = m_t / L_i, so d loss / d logp = -A_i m_t / (B L_i).

  Differs from token_mean aggregation whenever lengths differ (this is what makes the check bite).
  """
  data = _random_batch(seed=5, with_empty_row=False)
  assert len(set(data["lengths"].tolist())) > 1
  g = _grad_wrt_logp(presets.gspo(), data)
  mask = data["mask"]
  a = _np_group_adv(data["rewards"], data["group_ids"], data["lengths"] > 0, "group")
  want = -a[:, None] * mask / (RB * data["lengths"][:, None])
  np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-7)
  wrong = _np_onpolicy_grad(np.broadcast_to(a[:, None], mask.shape) * mask, mask, "token_mean")
  assert np.abs(g - wrong).max() > 1e-3


# --------------------------------------------------------------------------------------------
# 4. GPOMDP on a finite-horizon tabular MDP.
# --------------------------------------------------------------------------------------------

S, A, H, GAMMA = 2, 2, 3, 0.9
_mdp_rng = np.random.default_rng(20240607)
RHO = np.array([0.6, 0.4])
P = _mdp_rng.dirichlet(np.ones(S), size=(S, A))          # P[s, a, s']
R_SA = _mdp_rng.uniform(0.2, 1.0, size=(S, A)).astype(np.float32)   # positive rewards
M_THETA = _mdp_rng.normal(size=(S, A)).astype(np.float32)

# All trajectories (s_0, a_0, ..., s_{H-1}, a_{H-1}).
_TRAJ = np.array(list(itertools.product(range(S), range(A), repeat=H)), np.int32)
_TS, _TA = _TRAJ[:, 0::2], _TRAJ[:, 1::2]                  # [N, H] states, actions


def _traj_log_env_prob():
  """log rho(s_0) + sum_t log P(s_{t+1} | s_t, a_t), numpy float64, [N]."""
  lp = np.log(RHO[_TS[:, 0]])
  for t in range(H - 1):
    lp = lp + np.log(P[_TS[:, t], _TA[:, t], _TS[:, t + 1]])
  return lp


def mdp_exact_j(theta):
  """J(theta) = E[sum_t gamma^t r(s_t, a_t)] by enumerating all S^H A^H trajectories (jax)."""
  logpi = jax.nn.log_softmax(theta, axis=1)
  logp_traj = jnp.asarray(_traj_log_env_prob(), jnp.float32) + jnp.sum(logpi[_TS, _TA], axis=1)
  ret = np.sum(R_SA[_TS, _TA] * GAMMA ** np.arange(H), axis=1)
  return jnp.sum(jnp.exp(logp_traj) * jnp.asarray(ret, jnp.float32))


def mdp_j_by_dynamic_programming(theta):
  """Independent check of the enumeration: backward induction, numpy float64."""
  pi = np.exp(theta - theta.max(1, keepdims=True))
  pi = pi / pi.sum(1, keepdims=True)
  v = np.zeros(S)
  for _ in range(H):
    q = R_SA + GAMMA * P @ v                                # [S, A]
    v = np.sum(pi * q, axis=1)
  return RHO @ v


def _mdp_neg_loss(estimator, theta, states, actions, rewards):
  logp = jax.nn.log_softmax(theta, axis=1)[states, actions]            # [B, H]
  batch = SequenceBatch(mask=jnp.ones(logp.shape, jnp.float32), rewards=rewards)
  return -estimator(logp, batch)[0]


def mdp_exact_expected_grad(estimator):
  """E[-grad loss] for one trajectory per batch, by enumeration of all trajectories (float64)."""
  theta = jnp.asarray(M_THETA)
  pi = np.stack([softmax_np(row) for row in M_THETA.astype(np.float64)])
  probs = np.exp(_traj_log_env_prob() + np.sum(np.log(pi[_TS, _TA]), axis=1))
  assert abs(probs.sum() - 1.0) < 1e-9

  def one(s, a):
    r = jnp.asarray(R_SA)[s, a][None]
    return jax.grad(lambda th: _mdp_neg_loss(estimator, th, s[None], a[None], r))(theta)

  grads = np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(_TS), jnp.asarray(_TA)), np.float64)
  return probs @ grads.reshape(len(probs), -1)


def mdp_mc_grads(estimators, *, batch_size, n_batches, seed):
  """-grad_theta loss of each estimator for n_batches batches of `batch_size` trajectories.

  All estimators see the same trajectories (common random numbers); one jit. Returns
  [len(estimators), n_batches, S * A].
  """
  theta = jnp.asarray(M_THETA)
  log_p = jnp.asarray(np.log(P), jnp.float32)
  log_rho = jnp.asarray(np.log(RHO), jnp.float32)
  r_sa = jnp.asarray(R_SA)

  def one(key):
    keys = jax.random.split(key, 2 * H + 1)
    s = jax.random.categorical(keys[0], log_rho, shape=(batch_size,))
    logpi = jax.nn.log_softmax(theta, axis=1)
    states, actions = [], []
    for t in range(H):
      a = jax.random.categorical(keys[2 * t + 1], logpi[s])
      states.append(s)
      actions.append(a)
      s = jax.random.categorical(keys[2 * t + 2], log_p[s, a])
    states, actions = jnp.stack(states, 1), jnp.stack(actions, 1)
    rewards = r_sa[states, actions]                                      # [B, H]
    return jnp.stack([
        jax.grad(lambda th, e=est: _mdp_neg_loss(e, th, states, actions, rewards))(theta)
        for est in estimators])

  keys = jax.random.split(jax.random.PRNGKey(seed), n_batches)
  grads = np.asarray(jax.jit(jax.vmap(one))(keys))
  return np.moveaxis(grads, 1, 0).reshape(len(estimators), n_batches, -1)


def _mdp_exact_grad():
  return np.asarray(jax.grad(mdp_exact_j)(jnp.asarray(M_THETA)), np.float64).reshape(-1)


def test_mdp_enumeration_matches_dynamic_programming():
  np.testing.assert_allclose(float(mdp_exact_j(jnp.asarray(M_THETA))),
                             mdp_j_by_dynamic_programming(M_THETA.astype(np.float64)), rtol=1e-5)


@pytest.mark.parametrize("name,make", [
    ("gpomdp", lambda: presets.gpomdp(GAMMA)),
    ("reinforce", lambda: presets.reinforce("none", gamma=GAMMA)),
], ids=["gpomdp", "reinforce"])
def test_mdp_estimator_exact_expectation_is_grad_j(name, make):
  """One trajectory per batch, every trajectory enumerated: E[estimator] = grad J exactly."""
  np.testing.assert_allclose(mdp_exact_expected_grad(make()), _mdp_exact_grad(),
                             rtol=1e-5, atol=1e-6)


def test_mdp_reward_to_go_without_discount_from_start_is_biased():
  """G_t = sum_{t'>=t} gamma^{t'-t} r_t' (no gamma^t) is not grad J: the exact check can fail."""
  est = Estimator(advantage=adv.reward_to_go(GAMMA, discount_from_start=False),
                  reference=ref.on_policy(), aggregate=agg.seq_mean_token_sum)
  assert np.abs(mdp_exact_expected_grad(est) - _mdp_exact_grad()).max() > 1e-3


MDP_B = 4
_MDP_MC = {}


def _mdp_mc():
  """GPOMDP, REINFORCE and GPOMDP with a time baseline on the same trajectories, computed once."""
  if not _MDP_MC:
    names = ("gpomdp", "reinforce", "gpomdp_batch")
    ests = (presets.gpomdp(GAMMA), presets.reinforce("none", gamma=GAMMA),
            presets.gpomdp(GAMMA, baseline="batch"))
    _MDP_MC.update(zip(names, mdp_mc_grads(ests, batch_size=MDP_B, n_batches=N_BATCHES, seed=1)))
  return _MDP_MC


@pytest.mark.parametrize("name", ["gpomdp", "reinforce"])
def test_mdp_mc_mean_matches_exact_gradient(name):
  assert_mean_matches(_mdp_mc()[name], _mdp_exact_grad())


def test_mdp_mc_gpomdp_variance_is_lower_than_reinforce():
  """Same trajectories: dropping the past rewards lowers the total variance of the estimate."""
  g = _mdp_mc()
  assert g["gpomdp"].var(0).sum() < g["reinforce"].var(0).sum()


def test_mdp_mc_gpomdp_batch_time_baseline_factor():
  """A per-step batch-mean baseline (own trajectory included) scales E by (B - 1) / B."""
  exact = _mdp_exact_grad()
  mean, se = assert_mean_matches(_mdp_mc()["gpomdp_batch"], (MDP_B - 1) / MDP_B * exact)
  assert_rejects(mean, se, exact)


def test_zero_variance_group_gets_exactly_zero_advantage():
  """Equal rewards whose float32 mean is inexact (100.7, 0.9) must still give A = 0 exactly."""
  for value, n in ((100.7, 7), (0.9, 3)):
    r = jnp.full((n,), value, jnp.float32)
    for scale in ("group", "batch", "none"):
      a = adv_lib.group_normalized(r, jnp.zeros(n, jnp.int32), scale=scale)
      np.testing.assert_array_equal(np.asarray(a), 0.0)
    np.testing.assert_array_equal(np.asarray(adv_lib.whiten(r)), 0.0)
  # A varying group next to a constant one is unchanged: (1, 2, 3) -> +-1.2247.
  r = jnp.array([1.0, 2.0, 3.0, 0.9, 0.9, 0.9], jnp.float32)
  a = adv_lib.group_normalized(r, jnp.array([0, 0, 0, 1, 1, 1], jnp.int32))
  np.testing.assert_allclose(np.asarray(a), [-1.2247, 0.0, 1.2247, 0, 0, 0], atol=1e-4)
