"""The mctx step search of MCTS-DPO on a tiny problem whose best steps are known.

Problem: a response is 2 steps of 1 token in {0, 1}; at every node the two candidate steps are
[0] and [1] (deterministic proposals) with prior 0.7 on [0]; the outcome is 1 only for the
response [1, 0]; the self-evaluation is the constant 0.5 and reward_alpha = 0.5, so a terminal
node's value is 0.5 * outcome + 0.25: 0.75 for [1, 0], 0.25 otherwise. The right first step is
[1] even though the prior prefers [0].
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab.rollout import step_search as ss


def _model(step_len=1):
  def propose(params, key, state):
    del params, key, state
    steps = jnp.stack([jnp.zeros((step_len,), jnp.int32), jnp.ones((step_len,), jnp.int32)])
    return steps, jnp.log(jnp.array([0.7, 0.3]))

  def env_step(env, step):
    return env * 2 + step[0]

  def outcome(env):
    return (env == 2).astype(jnp.float32)  # first step 1, second step 0

  def self_eval(params, state):
    del params, state
    return jnp.float32(0.5)

  return ss.StepModel(propose, env_step, outcome, self_eval)


@functools.partial(jax.jit, static_argnames=("num_simulations", "batch", "step_len"))
def _search(key, num_simulations=20, batch=3, step_len=1):
  return ss.step_search(_model(step_len), None, key, jnp.zeros((batch,), jnp.int32), num_steps=2,
                        step_len=step_len, num_candidates=2, num_simulations=num_simulations)


def test_best_step_has_most_visits_and_highest_q():
  res = _search(jax.random.key(0), num_simulations=30)
  visits, q = np.asarray(res.visits), np.asarray(res.qvalues)
  # Root (depth 0): the child [1] wins on visits and on Q.
  assert np.all(visits[:, 0, 1] > visits[:, 0, 0])
  assert np.all(q[:, 0, 1] > q[:, 0, 0])
  # Depth 1 on the principal path (prefix [1]): terminal children, Q at their exact values.
  np.testing.assert_allclose(q[:, 1, 0], 0.75, rtol=1e-6)
  np.testing.assert_allclose(q[:, 1, 1], 0.25, rtol=1e-6)
  assert np.all(visits[:, 1, 0] > visits[:, 1, 1])
  np.testing.assert_array_equal(res.candidate_tokens[0, 1], [[1, 0], [1, 1]])
  np.testing.assert_array_equal(res.candidate_tokens[0, 0], [[0, 0], [1, 0]])
  np.testing.assert_array_equal(res.candidate_lengths[0], [[1, 1], [2, 2]])
  # mctx's tree: the root is visited once per simulation plus its own evaluation.
  np.testing.assert_array_equal(res.tree.node_visits[:, 0], 31)


def test_shapes_and_token_count():
  res = _search(jax.random.key(1), num_simulations=1, batch=4, step_len=3)
  assert res.candidate_tokens.shape == (4, 2, 2, 6)
  for x in (res.candidate_lengths, res.qvalues, res.visits, res.available):
    assert x.shape == (4, 2, 2)
  # One simulation: the root and one depth-1 node exist; each sampled K * step_len = 6 tokens.
  np.testing.assert_array_equal(res.sampled_tokens, 12)
  assert np.all(res.available[:, 0].sum(-1) == 1)
  assert not np.any(res.available[:, 1])
  full = _search(jax.random.key(1), num_simulations=30, step_len=3)
  # Full tree: root + 2 non-terminal children sample tokens; the 4 terminal nodes sample none.
  np.testing.assert_array_equal(full.sampled_tokens, 3 * 2 * 3)
  assert np.all(full.available)


def test_vmap_over_keys_matches_loop():
  keys = jax.random.split(jax.random.key(2), 3)
  batched = jax.jit(jax.vmap(lambda k: _search(k, num_simulations=30).visits))(keys)
  # the same search, jitted once, key by key
  for i in range(3):
    np.testing.assert_array_equal(batched[i], _search(keys[i], num_simulations=30).visits)


def test_stochastic_proposals_and_prior():
  """Sampled candidates: children sequences extend the parent's prefix by the sampled step."""
  def propose(params, key, state):
    del params
    steps = jax.random.randint(key, (3, 2), 0, 5)
    return steps, jnp.zeros((3,))
  model = ss.StepModel(propose, lambda e, s: e + jnp.sum(s), lambda e: (e > 8).astype(jnp.float32),
                       lambda p, s: jnp.float32(0.5))
  search = jax.jit(lambda key: ss.step_search(model, None, key, jnp.zeros((2,), jnp.int32),
                                              num_steps=3, step_len=2, num_candidates=3,
                                              num_simulations=25))
  res = search(jax.random.key(3))
  tok = np.asarray(res.candidate_tokens)
  avail = np.asarray(res.available)
  for b in range(2):
    for d in range(1, 3):
      parent = np.argmax(np.asarray(res.visits)[b, d - 1])
      if avail[b, d].any():
        # every child at depth d shares the path prefix: the chosen child's tokens at depth d-1.
        np.testing.assert_array_equal(tok[b, d, :, :2 * d],
                                      np.broadcast_to(tok[b, d - 1, parent, :2 * d], (3, 2 * d)))


@pytest.mark.parametrize("kwargs, name", [
    (dict(num_candidates=1), "num_candidates"),
    (dict(num_steps=0), "num_steps"),
    (dict(reward_alpha=1.5), "reward_alpha"),
    (dict(w_exp=0.0), "w_exp"),
])
def test_bad_input(kwargs, name):
  args = dict(num_steps=2, step_len=1, num_candidates=2, num_simulations=4)
  args.update(kwargs)
  with pytest.raises(ValueError, match=name):
    ss.step_search(_model(), None, jax.random.key(0), jnp.zeros((2,), jnp.int32), **args)


def test_all_sibling_sets_cover_every_expanded_node():
  res = _search(jax.random.key(4), num_simulations=30)
  tok, lengths, q, visits, avail = jax.jit(ss.all_sibling_sets, static_argnums=(1, 2))(
      res.tree, 2, 1)
  assert tok.shape == (3, 31, 2, 2) and avail.shape == (3, 31, 2)
  # Full tree: the root and its 2 children are the non-terminal nodes, each with 2 children.
  np.testing.assert_array_equal(np.asarray(avail).sum((1, 2)), 6)
  # Node 0 is the root: the same sibling set as depth 0 of the principal path.
  np.testing.assert_array_equal(tok[:, 0], res.candidate_tokens[:, 0])
  np.testing.assert_allclose(q[:, 0], res.qvalues[:, 0])
  np.testing.assert_array_equal(visits[:, 0], res.visits[:, 0])


def test_paper_backup_against_numpy():
  """V(node) = sum_c max(1, N_c) Q_c / sum_c max(1, N_c) over expanded children, leaves raw."""
  res = _search(jax.random.key(5), num_simulations=30)
  tree = res.tree
  idx = np.asarray(tree.children_index)
  visits = np.asarray(tree.children_visits)
  raw = np.asarray(tree.raw_values)

  def value(b, n):
    kids = [(a, c) for a, c in enumerate(idx[b, n]) if c >= 0]
    if not kids:
      return raw[b, n]
    w = np.array([max(1, visits[b, n, a]) for a, _ in kids], np.float64)
    return float(np.sum(w * [value(b, c) for _, c in kids]) / np.sum(w))

  for b in range(3):
    for a in range(2):
      np.testing.assert_allclose(res.qvalues[b, 0, a], value(b, idx[b, 0, a]), rtol=1e-5)
  # The prior-preferred first step [0] leads only to failures: its Q is exactly 0.25.
  np.testing.assert_allclose(res.qvalues[:, 0, 0], 0.25, rtol=1e-6)
  with pytest.raises(ValueError, match="backup"):
    ss.step_search(_model(), None, jax.random.key(0), jnp.zeros((2,), jnp.int32), num_steps=2,
                   step_len=1, num_candidates=2, num_simulations=4, backup="max")
