"""The options of `step_search` that follow the MCTS-DPO authors' code more closely.

child_values="expansion" (every candidate valued when its parent is expanded), the code's
length-normalised PUCT prior exp(sum logp / L^1.25), and per-step re-rooting. Hand-built tiny
trees with known values; numpy recursions for the back-up; mctx's own action selection for the
default scores.

Model A: 2 steps of 1 token; candidates [0] and [1] everywhere with prior (0.7, 0.3); env e ->
2 e + step; outcome 1 only for [1, 0] (env 2); self-evaluation 0.1 + 0.2 env, so with
reward_alpha = 0.5 a finished response scores 0.5 outcome + 0.05 + 0.1 env:
[0, 0] 0.05, [0, 1] 0.15, [1, 0] 0.75, [1, 1] 0.35; the partial responses [0], [1] score 0.1, 0.3.
"""

import functools

import jax
import jax.numpy as jnp
import mctx
import numpy as np
import pytest

from pgx_lab.estimators.preference import step_dpo
from pgx_lab.rollout import step_search as ss

LOGP_A = np.log([0.7, 0.3])


def _model_a():
  def propose(params, key, state):
    del params, key, state
    return jnp.array([[0], [1]], jnp.int32), jnp.asarray(LOGP_A, jnp.float32)
  return ss.StepModel(propose, lambda e, s: e * 2 + s[0], lambda e: (e == 2).astype(jnp.float32),
                      lambda p, s: 0.1 + 0.2 * s.env.astype(jnp.float32))


def _model_random(k=3, step_len=2):
  """Stochastic candidates in 0..4 with random log-probs; outcome: token sum above 8."""
  def propose(params, key, state):
    del params, state
    k1, k2 = jax.random.split(key)
    return (jax.random.randint(k1, (k, step_len), 0, 5),
            -jnp.abs(jax.random.normal(k2, (k,))) * step_len)
  return ss.StepModel(propose, lambda e, s: e + jnp.sum(s), lambda e: (e > 8).astype(jnp.float32),
                      lambda p, s: jnp.clip(s.env / 12.0, 0.0, 1.0).astype(jnp.float32))


@functools.partial(jax.jit, static_argnames=("model", "num_simulations", "kwargs", "batch",
                                             "num_steps", "k", "step_len"))
def _search(key, model="a", num_simulations=1, kwargs=(), batch=2, num_steps=2, k=2,
            step_len=1):
  m = _model_a() if model == "a" else _model_random(k, step_len)
  return ss.step_search(m, None, key, jnp.zeros((batch,), jnp.int32), num_steps=num_steps,
                        step_len=step_len, num_candidates=k, num_simulations=num_simulations,
                        **dict(kwargs))


EXP = (("child_values", "expansion"),)
# The two searches most tests share (compiled once): model R, D = 3, K = 3, 2 tokens per step,
# the authors' options, 6 root simulations, without / with 3 re-rooted simulations per depth.
CODE = EXP + (("prior", "length_normalized"),)
R_ARGS = dict(model="r", num_simulations=6, batch=2, num_steps=3, k=3, step_len=2)


def _r_search(reroot=0):
  kw = CODE + ((("reroot_simulations", reroot),) if reroot else ())
  return _search(jax.random.key(4), kwargs=kw, **R_ARGS)


def test_unvisited_children_take_their_expansion_value():
  res = _search(jax.random.key(0), num_simulations=2, kwargs=EXP)
  # Simulation 1: the root scores 0.1 + 0.7 vs 0.3 + 0.3 (unvisited Q = the values of [0], [1]
  # at expansion, N = 1): [0]. Simulation 2 (N = 2): [0] scores 0.1 + 0.7 sqrt(2) / 2 = 0.595
  # (its Q: the mean of its two unvisited finished children 0.05, 0.15), [1] 0.3 + 0.3 sqrt(2)
  # = 0.724: [1].
  np.testing.assert_array_equal(res.visits[:, 0], [[1, 1]] * 2)
  np.testing.assert_allclose(res.qvalues[:, 0], [[0.1, 0.55]] * 2, rtol=1e-6)  # 0.55: 0.75, 0.35
  np.testing.assert_allclose(res.qvalues[:, 1], [[0.05, 0.15]] * 2, rtol=1e-6)  # path: [0]
  assert np.all(res.available)  # every child of an expanded node can form a pair
  np.testing.assert_allclose(res.tree.embeddings.child_values[:, 0], [[0.1, 0.3]] * 2,
                             rtol=1e-6)
  # The default (mctx, unvisited at 0): simulation 2 scores [0] 0.595 vs [1] 0 + 0.3 sqrt(2)
  # = 0.424, so [0] again and then its child [0, 0]; unvisited children: Q 0, not available.
  base = _search(jax.random.key(0), num_simulations=2)
  np.testing.assert_array_equal(base.visits[:, 0], [[2, 0]] * 2)
  np.testing.assert_array_equal(base.visits[:, 1], [[1, 0]] * 2)
  np.testing.assert_allclose(base.qvalues[:, 0], [[0.05, 0.0]] * 2, rtol=1e-6)
  np.testing.assert_array_equal(base.available[:, 0], [[True, False]] * 2)
  np.testing.assert_array_equal(base.available[:, 1], [[True, False]] * 2)


def test_paper_backup_over_all_children_against_numpy():
  """V(node) = sum_c w_c Q_c / sum_c w_c over all K children, w_c = max(1, N_c) if expanded,
  1 with the expansion value if not; leaves keep their evaluation."""
  tree = _r_search(3).tree
  idx, visits = np.asarray(tree.children_index), np.asarray(tree.children_visits)
  raw, kids = np.asarray(tree.raw_values), np.asarray(tree.embeddings.child_values)
  depth = np.asarray(tree.embeddings.state.depth)

  def value(b, n):
    if depth[b, n] == 3:
      return raw[b, n]
    qs = [value(b, c) if c >= 0 else kids[b, n, a] for a, c in enumerate(idx[b, n])]
    w = [max(1, visits[b, n, a]) if c >= 0 else 1 for a, c in enumerate(idx[b, n])]
    return float(np.dot(w, qs) / np.sum(w))

  some_unexpanded = False
  for b in range(2):
    for n in range(idx.shape[1]):
      for a in range(3):
        c = idx[b, n, a]
        want = value(b, c) if c >= 0 else kids[b, n, a]
        some_unexpanded |= c < 0 and depth[b, n] < 3
        np.testing.assert_allclose(tree.qvalues(jnp.array([n]*2))[b, a], want, rtol=1e-5,
                                   atol=1e-7)
  assert some_unexpanded  # the test covers unexpanded children


def test_length_normalized_prior_and_puct_scores():
  res = _r_search()
  logp = np.asarray(res.tree.embeddings.steps_logp)  # [B, N, K] sum of the step's logp
  np.testing.assert_allclose(res.tree.children_prior_logits, logp / 2 ** 1.25, rtol=1e-6)
  tree = jax.tree.map(lambda x: x[0], res.tree)
  for n in (0, 1):
    n_node, visits = int(tree.node_visits[n]), np.asarray(tree.children_visits[n])
    q = np.asarray(tree.qvalues(n))  # paper back-up, unvisited at their expansion value
    p = np.exp(logp[0, n] / 2 ** 1.25)  # the code's MCTSNode.p: not renormalised
    assert abs(p.sum() - 1.0) > 1e-3
    want = q + 1.5 * p * np.sqrt(n_node) / (1 + visits)
    got = ss.puct_scores(tree, n, num_steps=3, w_exp=1.5, backup="paper", expansion=True,
                         prior="length_normalized")
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_default_scores_reproduce_mctx_selection():
  """With the defaults' choices (softmax prior, unvisited at 0, mctx's Q) our PUCT picks what
  mctx's `muzero_action_selection` (pb_c_init = w_exp, pb_c_base = inf, min-max [0, 1]) picks."""
  res = _r_search(3)
  qt = lambda t, i: mctx.qtransform_by_min_max(t, i, min_value=0.0, max_value=1.0)

  @jax.jit
  def both(tree):  # unbatched tree: (mctx's action, ours) at every node slot
    def one(n):
      key = jax.random.fold_in(jax.random.key(9), n)
      ref = mctx.muzero_action_selection(key, tree, n, 1, pb_c_init=0.8, pb_c_base=1e30,
                                         qtransform=qt)
      score = ss.puct_scores(tree, n, num_steps=3, w_exp=0.8, backup="mctx", expansion=False,
                             prior="softmax")
      return ref, jnp.argmax(score + 1e-7 * jax.random.uniform(key, (3,)))
    return jax.vmap(one)(jnp.arange(tree.node_visits.shape[0]))

  for b in range(2):
    tree = jax.tree.map(lambda x, b=b: x[b], res.tree)
    ref, ours = both(tree)
    real = np.asarray(tree.node_visits) > 0
    np.testing.assert_array_equal(np.asarray(ours)[real], np.asarray(ref)[real])
    assert len(set(np.asarray(ref)[real].tolist())) > 1  # not one trivial choice everywhere


def test_rerooting_adds_visits_only_along_the_chosen_path():
  plain, rer = _r_search(), _r_search(3)
  np.testing.assert_array_equal(rer.tree.node_visits[:, 0], 1 + 6 + 2 * 3)
  # The first 6 simulations are the same search; the 6 re-rooted ones all go through the
  # most-visited root child, the other root children keep their visits.
  first = np.asarray(plain.visits[:, 0]).argmax(-1)
  np.testing.assert_array_equal(np.asarray(rer.visits[:, 0]).argmax(-1), first)
  gain = np.asarray(rer.visits[:, 0]) - np.asarray(plain.visits[:, 0])
  np.testing.assert_array_equal(gain, 6 * np.eye(3, dtype=int)[first])
  # During the 3 depth-2 simulations the depth-1 path node passes all visits to its chosen child.
  assert np.all(np.asarray(rer.visits[:, 1]).max(-1) >= 3)
  # Re-rooted expansions are counted: K * step_len tokens per expanded non-terminal node.
  st = rer.tree.embeddings.state
  n_exp = np.sum((np.asarray(rer.tree.node_visits) > 0) & (np.asarray(st.depth) < 3), -1)
  np.testing.assert_array_equal(rer.sampled_tokens, n_exp * 3 * 2)
  assert np.all(rer.sampled_tokens >= plain.sampled_tokens)


def test_pairs_share_exactly_their_prefix():
  res = _r_search(3)
  sets = (res.candidate_tokens, res.candidate_lengths, res.qvalues, res.visits, res.available)
  pairs = step_dpo.build_pairs(*[x.reshape((6,) + x.shape[2:]) for x in sets])
  valid = np.asarray(pairs.valid)
  assert valid.sum() >= 3
  depth = np.tile(np.arange(3), 2)
  w, l = np.asarray(pairs.chosen_tokens), np.asarray(pairs.rejected_tokens)
  d = np.asarray(pairs.divergence)
  for i in np.flatnonzero(valid):
    pre = 2 * depth[i]  # the path node's prefix: 2 tokens per step
    assert pre <= d[i] < pre + 2
    np.testing.assert_array_equal(w[i, :d[i]], l[i, :d[i]])
    assert w[i, d[i]] != l[i, d[i]]
    np.testing.assert_array_equal(np.asarray(pairs.chosen_mask)[i],
                                  (np.arange(6) >= d[i]) & (np.arange(6) < pre + 2))
    b, j = i // 3, i % 3
    if j:  # the prefix is the path: the most-visited child one step up
      up = np.asarray(res.visits)[b, j - 1].argmax()
      np.testing.assert_array_equal(w[i, :pre], np.asarray(res.candidate_tokens)[b, j - 1, up,
                                                                                 :pre])
    # chosen = highest Q of the sibling set
    np.testing.assert_allclose(pairs.chosen_q[i], np.max(np.asarray(res.qvalues)[b, j]))


@pytest.mark.parametrize("kwargs, name", [
    (dict(child_values="all"), "child_values"),
    (dict(prior="uniform"), "prior"),
    (dict(reroot_simulations=-1), "reroot_simulations"),
    (dict(length_penalty=-0.5), "length_penalty"),
    (dict(child_values="expansion", dirichlet_fraction=0.25), "dirichlet_fraction"),
])
def test_bad_input(kwargs, name):
  with pytest.raises(ValueError, match=name):
    ss.step_search(_model_a(), None, jax.random.key(0), jnp.zeros((2,), jnp.int32), num_steps=2,
                   step_len=1, num_candidates=2, num_simulations=4, **kwargs)
