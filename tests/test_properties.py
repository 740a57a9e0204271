"""Property tests over every preset and pairwise loss: finiteness, masking, and vmap/batch equality.

Hypothesis draws the structure (B, T, the 0/1 mask, all-masked rows and batches, zero-variance
groups, group ids, how far the old/reference policies are from the current one); a drawn seed
fills in the values. Masked log-probs (logp, old_logp and ref_logp) are -inf.

Speed: on CPU a compile costs far more than a call, and every new shape compiles (eagerly, every
primitive compiles once per shape). So each hypothesis example draws one shape (B, T) and several
sub-cases of that shape (random masks, all-masked rows, a fully masked batch, zero-variance
groups), and all estimators of a test run in one jitted function, compiled once per shape with
cheap XLA options. That keeps the number of compiles small and the number of checked cases large.
"""

import dataclasses
from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from pgx_lab import PairBatch
from pgx_lab import SequenceBatch
from pgx_lab import presets
from pgx_lab.estimators import Estimator
from pgx_lab.estimators import advantage_parts
from pgx_lab.estimators import aggregation
from pgx_lab.estimators import preference
from pgx_lab.estimators import reference_parts

NEG_INF = -np.inf
# Tiny graphs: XLA's optimisation passes cost more than they save.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
MASK_MODES = ("random", "rows_masked", "all_masked", "full")


def fast_jit(f):
  return jax.jit(f, compiler_options=FAST_COMPILE)


# ------------------------------------------------------------------------------------------------
# The estimators under test.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Spec:
  make: Callable[[], Estimator]
  rewards: str = "seq"           # batch.rewards: "seq" [B], "token" [B, T], or "either"
  advantages: str = "either"     # batch.advantages: "seq", "token" or "either"
  entropy: bool = False          # pass entropy= (an entropy bonus)


def _precomputed(reference, aggregate):
  return lambda: Estimator(advantage=advantage_parts.precomputed(), reference=reference,
                           aggregate=aggregate)


# Every preset; options that only add terms (KL, entropy, dual clip, ratio cap, eps_high) are
# switched on so that their code is exercised too.
SPECS: Dict[str, Spec] = {
    "sft": Spec(presets.sft),
    "reinforce_none": Spec(lambda: presets.reinforce("none"), rewards="either"),
    "reinforce_batch_entropy": Spec(
        lambda: presets.reinforce("batch", gamma=0.9, entropy_coef=0.01), rewards="either",
        entropy=True),
    "reinforce_group": Spec(lambda: presets.reinforce("group"), rewards="either"),
    "reinforce_loo": Spec(lambda: presets.reinforce("loo"), rewards="either"),
    "rloo": Spec(presets.rloo),
    "gpomdp": Spec(lambda: presets.gpomdp(0.9), rewards="token"),
    "gpomdp_batch_baseline": Spec(lambda: presets.gpomdp(1.0, "batch"), rewards="token"),
    "ppo": Spec(lambda: presets.ppo(0.2, eps_high=0.28, dual_clip=3.0, kl_beta=0.1,
                                    entropy_coef=0.01), entropy=True),
    "ppo_gae": Spec(lambda: presets.ppo(advantage="gae"), rewards="token"),
    "grpo_kl_k3": Spec(lambda: presets.grpo("grpo", kl_beta=0.04), rewards="either"),
    "bnpo_kl_k1_batch_scale": Spec(
        lambda: presets.grpo("bnpo", kl_beta=0.04, kl_estimator="k1", scale="batch",
                             unbiased_std=True)),
    "dr_grpo_kl_k2": Spec(lambda: presets.grpo("dr_grpo", kl_beta=0.04, kl_estimator="k2")),
    "dapo_kl_k3_clip_higher": Spec(
        lambda: presets.grpo("dapo", eps_high=0.28, kl_beta=0.04, dual_clip=3.0, ratio_cap=4.0)),
    "gspo_kl": Spec(lambda: presets.gspo(kl_beta=0.04)),
    "gspo_token": Spec(presets.gspo_token),
    "gspo_token_per_token_adv": Spec(
        lambda: presets.gspo_token(advantage=advantage_parts.reward_to_go(0.9)), rewards="token"),
    "cispo_kl": Spec(lambda: presets.cispo(kl_beta=0.04)),
    "positive_only_grpo": Spec(lambda: presets.positive_only(presets.grpo())),
}

# Estimators whose advantage couples the examples of a batch (groups, batch baselines, whitening).
GROUP_SPECS = {n: SPECS[n] for n in (
    "reinforce_batch_entropy", "reinforce_group", "rloo", "ppo", "grpo_kl_k3",
    "bnpo_kl_k1_batch_scale", "dr_grpo_kl_k2", "dapo_kl_k3_clip_higher", "gspo_kl", "gspo_token",
    "cispo_kl")}

# name -> (spec, aggregation): estimators whose advantage is per example (precomputed advantages,
# returns without baseline, reward-to-go), so a batch is the combination of single examples.
INDEPENDENT = {
    "sft": (SPECS["sft"], "token_mean"),
    "reinforce_none": (SPECS["reinforce_none"], "seq"),
    "gpomdp": (SPECS["gpomdp"], "seq"),
    "ppo_unwhitened_kl": (Spec(lambda: presets.ppo(whiten=False, kl_beta=0.1)), "token_mean"),
    "precomputed_token_clip_seq_mean_token_mean": (
        Spec(_precomputed(reference_parts.token_clip(0.2, 0.28), aggregation.seq_mean_token_mean)),
        "seq"),
    "precomputed_sequence_clip_seq_mean_token_mean": (
        Spec(_precomputed(reference_parts.sequence_clip(0.1, 0.2), aggregation.seq_mean_token_mean),
             advantages="seq"), "seq"),
    "precomputed_cispo_seq_mean_token_sum": (
        Spec(_precomputed(reference_parts.cispo(2.0), aggregation.seq_mean_token_sum)), "seq"),
}

# token_mean estimators: an appended all-masked row must not change their loss.
TOKEN_MEAN = {n: SPECS[n] for n in ("sft", "bnpo_kl_k1_batch_scale", "dapo_kl_k3_clip_higher",
                                    "cispo_kl")}
TOKEN_MEAN["ppo_token_adv"] = Spec(presets.ppo, advantages="token")

PAIRWISE = {
    "dpo": preference.dpo(0.1),
    "cdpo_length_normalized": preference.dpo(0.5, 0.1, length_normalize=True),
    "ipo": preference.ipo(0.1),
    "ipo_length_normalized": preference.ipo(0.5, length_normalize=True),
    "hinge": preference.hinge(0.1),
}


# ------------------------------------------------------------------------------------------------
# Strategies and batch builders.
# ------------------------------------------------------------------------------------------------


@st.composite
def masks(draw, b: int, t: int, mode: Optional[str] = None) -> np.ndarray:
  """A 0/1 [b, t] mask: random, with all-masked rows, fully masked, or fully valid."""
  bits = draw(st.lists(st.booleans(), min_size=b * t, max_size=b * t))
  m = np.asarray(bits, np.float32).reshape(b, t)
  mode = mode or draw(st.sampled_from(MASK_MODES))
  if mode == "all_masked":
    m[:] = 0.0
  elif mode == "full":
    m[:] = 1.0
  elif mode == "rows_masked":
    rows = np.asarray(draw(st.lists(st.booleans(), min_size=b, max_size=b)))
    rows[draw(st.integers(0, b - 1))] = True   # at least one all-masked row
    m[rows] = 0.0
  return m


@st.composite
def cases(draw, b: int, t: int, mode: Optional[str] = None):
  """One batch's structure at shape [b, t]."""
  return dict(
      mask=draw(masks(b, t, mode)),
      group_ids=np.asarray(draw(st.lists(st.integers(0, b - 1), min_size=b, max_size=b)),
                           np.int32),
      zero_variance=draw(st.booleans()),
      binary_rewards=draw(st.booleans()),
      # 0: old == current (ratio 1); 30: ratios far outside any clip, the log-ratio clamped.
      old_scale=draw(st.sampled_from([0.0, 0.1, 1.0, 30.0])),
      ref_scale=draw(st.sampled_from([0.0, 0.5, 30.0])),
      token_rewards=draw(st.booleans()),
      token_advantages=draw(st.booleans()),
      seed=draw(st.integers(0, 2**31 - 1)),
  )


@st.composite
def shaped_cases(draw, max_b: int = 6, max_t: int = 5):
  """A shape (B, T) and one sub-case per mask mode at that shape (one compile, four cases)."""
  b = draw(st.integers(1, max_b))
  t = draw(st.integers(1, max_t))
  return _same_ranks([draw(cases(b, t, mode)) for mode in MASK_MODES])


def _same_ranks(subcases):
  """Gives every sub-case the first one's ranks of rewards/advantages (same shapes: one compile)."""
  for case in subcases[1:]:
    case.update(token_rewards=subcases[0]["token_rewards"],
                token_advantages=subcases[0]["token_advantages"])
  return subcases


def _with_neg_inf(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
  return np.where(mask > 0, x, NEG_INF).astype(np.float32)


def build(case: dict, spec: Spec):
  """(logp, batch, entropy) for one spec; masked log-probs are -inf. logp depends on case only."""
  rng = np.random.default_rng(case["seed"])
  mask = case["mask"]
  b, t = mask.shape
  logp = rng.uniform(-8.0, -1e-3, (b, t))
  old = logp + case["old_scale"] * rng.normal(size=(b, t))
  ref = logp + case["ref_scale"] * rng.normal(size=(b, t))
  group_ids = case["group_ids"]

  token = spec.rewards == "token" or (spec.rewards == "either" and case["token_rewards"])
  shape = (b, t) if token else (b,)
  if case["binary_rewards"]:
    r = rng.integers(0, 2, size=shape).astype(np.float32)
  else:
    r = rng.normal(size=shape).astype(np.float32)
  if case["zero_variance"]:
    r = r[group_ids]   # all members of a group share one reward (row): zero-variance groups

  adv_token = spec.advantages == "token" or (spec.advantages == "either"
                                             and case["token_advantages"])
  advantages = rng.normal(size=(b, t) if adv_token else (b,))
  values = rng.normal(size=(b, t + 1))
  discounts = rng.choice([0.0, 0.99], size=(b, t), p=[0.2, 0.8])
  entropy = rng.uniform(0.0, 3.0, (b, t))
  batch = SequenceBatch(
      mask=jnp.asarray(mask),
      old_logp=jnp.asarray(_with_neg_inf(old, mask)),
      ref_logp=jnp.asarray(_with_neg_inf(ref, mask)),
      rewards=jnp.asarray(r, jnp.float32),
      group_ids=jnp.asarray(group_ids),
      advantages=jnp.asarray(advantages, jnp.float32),
      values=jnp.asarray(values, jnp.float32),
      discounts=jnp.asarray(discounts, jnp.float32),
  )
  entropy = jnp.asarray(entropy, jnp.float32) if spec.entropy else None
  return jnp.asarray(_with_neg_inf(logp, mask)), batch, entropy


def build_all(case: dict, specs: Dict[str, Spec]):
  """(logp, {name: batch}, {name: entropy}) for every spec, sharing logp."""
  batches, entropies = {}, {}
  for name, spec in specs.items():
    logp, batches[name], entropies[name] = build(case, spec)
  return logp, batches, entropies


def value_and_grads(specs: Dict[str, Spec], with_metrics: bool = True):
  """f(logp, batches, entropies) -> {name: (loss, metrics, dloss/dlogp)} over all specs."""
  ests = {name: spec.make() for name, spec in specs.items()}

  def f(logp, batches, entropies):
    out = {}
    for name, est in ests.items():
      def loss_fn(l, est=est, name=name):
        return est(l, batches[name], entropy=entropies[name])
      (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(logp)
      out[name] = (loss, metrics if with_metrics else {}, grad)
    return out

  return f


def _assert_finite(x, what):
  x = np.asarray(x)
  assert np.all(np.isfinite(x)), f"{what} is not finite: {x}"


# ------------------------------------------------------------------------------------------------
# Finiteness and masking.
# ------------------------------------------------------------------------------------------------

_ALL = fast_jit(value_and_grads(SPECS))


@settings(max_examples=8)
@given(subcases=shaped_cases())
def test_loss_and_grad_finite_and_zero_at_masked_positions(subcases):
  for case in subcases:
    out = _ALL(*build_all(case, SPECS))
    masked = case["mask"] == 0
    for name, (loss, metrics, grad) in out.items():
      assert loss.shape == (), name
      _assert_finite(loss, f"{name}: loss")
      _assert_finite(grad, f"{name}: d loss / d logp")
      np.testing.assert_array_equal(np.asarray(grad)[masked], 0.0,
                                    err_msg=f"{name}: gradient at masked positions")
      for key, value in metrics.items():
        _assert_finite(value, f"{name}: metrics[{key!r}]")
      if not case["mask"].any():
        # Empty denominators are clamped: an all-masked batch gives 0, not NaN.
        assert loss == 0.0, name


def _pairwise_all(lw, ll, batch):
  out = {}
  for name, fn in PAIRWISE.items():
    (loss, metrics), grads = jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(lw, ll, batch)
    # Pairs do not couple: the batched loss is the mean of per-pair losses (vmap of single pairs).
    single = jax.vmap(lambda w, l, bt, fn=fn: fn(w[None], l[None],
                                                  jax.tree.map(lambda x: x[None], bt))[0])
    out[name] = (loss, metrics, grads, jnp.mean(single(lw, ll, batch)))
  return out


_PAIRWISE_ALL = fast_jit(_pairwise_all)


@st.composite
def pair_cases(draw):
  b = draw(st.integers(1, 6))
  tw, tl = draw(st.integers(1, 5)), draw(st.integers(1, 5))
  modes = draw(st.permutations(MASK_MODES))
  return [(draw(masks(b, tw, mw)), draw(masks(b, tl, ml)), draw(st.integers(0, 2**31 - 1)))
          for mw, ml in zip(MASK_MODES, modes)]


@settings(max_examples=8)
@given(subcases=pair_cases())
def test_pairwise_losses_finite_and_zero_at_masked_positions(subcases):
  for mask_w, mask_l, seed in subcases:
    rng = np.random.default_rng(seed)

    def logp(m):
      return jnp.asarray(_with_neg_inf(rng.uniform(-60.0, 0.0, m.shape), m))

    lw, ll = logp(mask_w), logp(mask_l)
    batch = PairBatch(chosen_mask=jnp.asarray(mask_w), rejected_mask=jnp.asarray(mask_l),
                      ref_chosen_logp=logp(mask_w), ref_rejected_logp=logp(mask_l))
    for name, (loss, metrics, (gw, gl), per_pair_mean) in _PAIRWISE_ALL(lw, ll, batch).items():
      _assert_finite(loss, f"{name}: loss")
      _assert_finite(gw, f"{name}: d loss / d logp_chosen")
      _assert_finite(gl, f"{name}: d loss / d logp_rejected")
      np.testing.assert_array_equal(np.asarray(gw)[mask_w == 0], 0.0, err_msg=name)
      np.testing.assert_array_equal(np.asarray(gl)[mask_l == 0], 0.0, err_msg=name)
      for key, value in metrics.items():
        _assert_finite(value, f"{name}: metrics[{key!r}]")
      np.testing.assert_allclose(per_pair_mean, loss, rtol=1e-5, atol=1e-5, err_msg=name)


# ------------------------------------------------------------------------------------------------
# vmap over single examples equals the batched call (estimators whose advantage does not couple).
# ------------------------------------------------------------------------------------------------

_INDEP_SPECS = {name: spec for name, (spec, _) in INDEPENDENT.items()}
_INDEP_ONE = value_and_grads(_INDEP_SPECS, with_metrics=False)
_INDEP_BATCHED = fast_jit(_INDEP_ONE)


@fast_jit
def _indep_singles(logp, batches, entropies):
  """vmap over examples of the estimators applied to single-example batches [1, T]."""

  def one(l, b, e):
    add = lambda tree: jax.tree.map(lambda x: x[None], tree)  # noqa: E731
    return _INDEP_ONE(l[None], add(b), add(e))

  return jax.vmap(one)(logp, batches, entropies)


@settings(max_examples=6)
@given(subcases=shaped_cases())
def test_vmap_over_examples_equals_batched_call(subcases):
  for case in subcases:
    args = build_all(case, _INDEP_SPECS)
    batched = _INDEP_BATCHED(*args)
    singles = _indep_singles(*args)
    n = np.sum(case["mask"], axis=1)
    b = case["mask"].shape[0]
    for name, (_, kind) in INDEPENDENT.items():
      loss, _, grad = batched[name]
      losses, _, grads = singles[name]        # [B], [B, 1, T]
      grads = grads[:, 0]
      if kind == "seq":
        # seq_mean_*: the batched loss is the plain mean of the per-example losses.
        combined, combined_grad = jnp.mean(losses), grads / b
      else:
        # token_mean: example i weighs its token count n_i, over max(sum_i n_i, 1).
        den = max(n.sum(), 1.0)
        combined, combined_grad = jnp.sum(losses * n) / den, grads * (n / den)[:, None]
      np.testing.assert_allclose(combined, loss, rtol=1e-5, atol=1e-6, err_msg=name)
      np.testing.assert_allclose(combined_grad, grad, rtol=1e-5, atol=1e-6, err_msg=name)


# ------------------------------------------------------------------------------------------------
# Group estimators: vmap over a leading group axis [N, G, T] equals a Python loop over groups.
# ------------------------------------------------------------------------------------------------

_GROUP_ONE = value_and_grads(GROUP_SPECS, with_metrics=False)
_GROUP_LOOP = fast_jit(_GROUP_ONE)
_GROUP_VMAP = fast_jit(jax.vmap(_GROUP_ONE))


@st.composite
def group_cases(draw):
  n = draw(st.integers(1, 3))
  g = draw(st.integers(1, 4))
  t = draw(st.integers(1, 4))
  return _same_ranks([draw(cases(g, t)) for _ in range(n)])


@settings(max_examples=6)
@given(groups=group_cases())
def test_vmap_over_groups_equals_loop(groups):
  per_group = [build_all(case, GROUP_SPECS) for case in groups]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *per_group)   # each leaf [N, G, ...]
  vmapped = _GROUP_VMAP(*stacked)
  for i, args in enumerate(per_group):
    for name, (loss, _, grad) in _GROUP_LOOP(*args).items():
      v_loss, _, v_grad = vmapped[name]
      np.testing.assert_allclose(v_loss[i], loss, rtol=1e-5, atol=1e-6, err_msg=name)
      np.testing.assert_allclose(v_grad[i], grad, rtol=1e-5, atol=1e-6, err_msg=name)
      _assert_finite(v_grad[i], name)


# ------------------------------------------------------------------------------------------------
# Padding rows: an appended all-masked row must not change a token_mean loss.
# ------------------------------------------------------------------------------------------------


def _append_padding_row(logp, batch, entropy, value):
  """Appends one all-masked row (its own group; reward and advantage `value`)."""
  b = logp.shape[0]

  def pad(x, fill):
    return jnp.concatenate([x, jnp.full((1,) + x.shape[1:], fill, x.dtype)])

  batch = batch.replace(
      mask=pad(batch.mask, 0.0), old_logp=pad(batch.old_logp, NEG_INF),
      ref_logp=pad(batch.ref_logp, NEG_INF), rewards=pad(batch.rewards, value),
      group_ids=pad(batch.group_ids, b), advantages=pad(batch.advantages, value),
      values=pad(batch.values, 0.0), discounts=pad(batch.discounts, 1.0))
  return pad(logp, NEG_INF), batch, None if entropy is None else pad(entropy, 0.0)


_TOKEN_MEAN_FN = fast_jit(value_and_grads(TOKEN_MEAN, with_metrics=False))


def _padding_invariance(specs, fn, subcases, value):
  for case in subcases:
    logp, batches, entropies = build_all(case, specs)
    padded = {n: _append_padding_row(logp, batches[n], entropies[n], value) for n in specs}
    out = fn(logp, batches, entropies)
    out_padded = fn(padded[next(iter(specs))][0], {n: p[1] for n, p in padded.items()},
                    {n: p[2] for n, p in padded.items()})
    for name in specs:
      loss, _, grad = out[name]
      loss2, _, grad2 = out_padded[name]
      np.testing.assert_allclose(loss2, loss, rtol=1e-5, atol=1e-6, err_msg=name)
      np.testing.assert_allclose(grad2[:-1], grad, rtol=1e-5, atol=1e-6, err_msg=name)
      np.testing.assert_array_equal(grad2[-1], 0.0, err_msg=name)


@settings(max_examples=5)
@given(subcases=shaped_cases(max_b=5), value=st.sampled_from([-50.0, 0.0, 50.0]))
def test_all_masked_padding_row_does_not_change_token_mean_loss(subcases, value):
  _padding_invariance(TOKEN_MEAN, _TOKEN_MEAN_FN, subcases, value)


def test_ppo_sequence_advantage_whitening_ignores_padding_rows():
  # Row 0 is valid with advantage 1; row 1 is padding. Whitening over valid rows leaves one
  # advantage, which whitens to 0, so the loss is 0 with or without the padding row.
  est = presets.ppo()
  logp = jnp.log(jnp.full((2, 2), 0.5))
  batch = SequenceBatch(mask=jnp.array([[1.0, 1.0], [0.0, 0.0]]), old_logp=logp,
                        advantages=jnp.array([1.0, 100.0]))
  loss = jax.jit(lambda l, b: est(l, b)[0])
  alone = loss(logp[:1], jax.tree.map(lambda x: x[:1], batch))
  padded = loss(logp, batch)
  assert alone == 0.0
  np.testing.assert_allclose(padded, alone, atol=1e-6)


def test_entropy_bonus_ignores_non_finite_entropy_at_masked_positions():
  est = presets.ppo(entropy_coef=0.01)
  logp = jnp.array([[-0.5, -jnp.inf]])
  batch = SequenceBatch(mask=jnp.array([[1.0, 0.0]]), old_logp=logp,
                        advantages=jnp.array([[1.0, 0.0]]))
  loss, _ = jax.jit(est)(logp, batch, entropy=jnp.array([[0.7, jnp.nan]]))
  assert np.isfinite(loss)
