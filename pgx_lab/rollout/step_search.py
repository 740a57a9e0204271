"""Tree search over reasoning steps with mctx, for step-level preference pairs (MCTS-DPO).

Xie et al. 2024, "Monte Carlo Tree Search Boosts Reasoning via Iterative Preference Learning"
(arXiv 2405.00451); code YuxiXie/MCTS-DPO `mcts_rl/algorithms/mcts/mcts/mcts.py` (at fb23437).

A node is a partial response; a step is a chunk of `step_len` tokens. Expanding a node samples
`num_candidates` (K) candidate steps from the policy; they are the node's K actions, with the
policy's log-probs of the sampled steps as the prior logits (softmax over the K candidates).
Selection is PUCT with w_exp (mctx's `muzero_action_selection` with pb_c_init = w_exp and an
infinite pb_c_base, and raw Q through min-max [0, 1] so unvisited children score 0):
  a* = argmax_a Q(s, a) + w_exp p(a|s) sqrt(N(s)) / (1 + N(s, a)).
Node values: at a terminal node (depth `num_steps`) v = alpha * outcome + (1 - alpha) * self_eval,
elsewhere v = self_eval (alpha = `reward_alpha`, 0.5 in the paper; outcome is exact match).
Backup. Inside the search mctx backs up its running mean (the visit-weighted mean of a node's
children's Q plus the node's own first evaluation counted once) and PUCT selects with it. The Q
that rank siblings for pairs (`backup="paper"`, the default) are recomputed after the search with
the paper's rule (`mcts.py` back-prop): V(leaf) = its evaluation, and for a node with expanded
children V(node) = sum_c max(1, N_c) Q_c / sum_c max(1, N_c), Q_c = r_c + gamma V(c), gamma = 1.
The paper expands all K children at once; mctx expands a child only when first visited, so here
the sum runs over the expanded children. `backup="mctx"` ranks with mctx's own Q instead (it lets
a node's own first evaluation tilt its Q, so siblings whose subtrees all fail can still differ).

Options closer to the authors' code (defaults keep the behaviour above):
  child_values="expansion": `_expand_and_evaluate` values all K children when their parent is
    expanded (`get_values` on every candidate). Here expanding a node also evaluates the K child
    states (self_eval, and the outcome for a finished one: no extra tokens, the steps are already
    sampled); an unvisited child's Q is that value (the code's initial Q = parent.V + r with
    parent.V = 0 at creation and r = value - parent.value, i.e. the child's own value relative to
    its parent), the paper back-up averages over all K children (unvisited ones with weight 1),
    and every child of an expanded non-terminal node is `available` for pairs.
  prior="length_normalized": the code's `MCTSNode.p = exp(sum logp / L ** length_penalty)` of the
    candidate step (L = step_len tokens, length_penalty 1.25), used as is (not renormalised over
    the K candidates, as in the code's `_puct`).
  reroot_simulations=R > 0: the code's per-step search (`trainer.tree_constructor`): after the
    first `num_simulations` at the root, for each depth j = 1..D-1 R more simulations run from the
    most-visited node at depth j of the principal path, keeping the tree and its statistics (the
    code passes the chosen node as the next root, `root_node=cur_node`). In one mctx search this
    is a selection that follows the most-visited child above depth j during phase j.
Any of these options switches selection to our own PUCT (`puct_scores`, used through
`mctx.search`): Q of a visited child from the `backup` rule itself (the paper's back-up inside the
search as well, as in the code), of an unvisited one its expansion value (or 0, the minimum).

Token accounting: every expanded non-terminal node (the root included) samples K * step_len
tokens; terminal nodes sample nothing. `sampled_tokens` counts exactly those.
"""

import functools
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import mctx

from pgx_lab import validation

Array = jax.Array
BACKUPS = ("paper", "mctx")
CHILD_VALUES = ("min", "expansion")
PRIORS = ("softmax", "length_normalized")


@flax.struct.dataclass
class StepState:
  """A partial response: tokens [T] int32 (padded with 0), length, depth (steps taken), env."""
  tokens: Array
  length: Array
  depth: Array
  env: Any


class StepModel(NamedTuple):
  """The problem: pure, unbatched functions that join a policy and an environment.

  propose(params, key, state) -> (steps [K, step_len] int32, logp [K]): K candidate steps sampled
    from the policy at `state`, with their log-probs (the search prior).
  env_step(env, step [step_len]) -> env: the environment after appending a step.
  outcome(env) -> scalar in [0, 1]: the exact-match reward of a finished response.
  self_eval(params, state) -> scalar in [0, 1]: the policy's own value estimate of `state`.
  """
  propose: Callable
  env_step: Callable
  outcome: Callable
  self_eval: Callable


class _Node(NamedTuple):
  state: StepState
  steps: Array  # [K, step_len]
  steps_logp: Array  # [K]
  child_values: Array  # [K] values of the K children at expansion (zeros unless "expansion")


class SearchResult(NamedTuple):
  """What `step_search` returns, B = prompts, D = num_steps, K = candidates, T = D * step_len.

  tree: the mctx `Tree` (node_visits [B, N], children_index / children_visits [B, N, K], ...);
    with backup="paper" its `children_values` are replaced by `paper_backup`'s.
  candidate_tokens: [B, D, K, T] int32, along the principal path (the most visited child at each
    depth), the sequence of each of the K children of the path node at depth d.
  candidate_lengths: [B, D, K] int32.
  qvalues: [B, D, K] the children's Q; visits: [B, D, K] int32 their visit counts.
  available: [B, D, K] bool, the child was expanded (visited at least once); with
    child_values="expansion", its parent was expanded (every child has a value).
  sampled_tokens: [B] int32, tokens the search sampled (K * step_len per expanded non-terminal).
  """
  tree: Any
  candidate_tokens: Array
  candidate_lengths: Array
  qvalues: Array
  visits: Array
  available: Array
  sampled_tokens: Array


def root_state(env: Any, num_steps: int, step_len: int) -> StepState:
  """An empty response for one prompt whose environment state is `env` (unbatched)."""
  return StepState(tokens=jnp.zeros((num_steps * step_len,), jnp.int32),
                   length=jnp.zeros((), jnp.int32), depth=jnp.zeros((), jnp.int32), env=env)


def _child(model: StepModel, state: StepState, step: Array) -> StepState:
  tokens = jax.lax.dynamic_update_slice(state.tokens, step.astype(jnp.int32), (state.length,))
  return StepState(tokens, state.length + step.shape[0], state.depth + 1,
                   model.env_step(state.env, step))


def _value(model, params, state, num_steps, reward_alpha):
  v = model.self_eval(params, state)
  return jnp.where(state.depth >= num_steps,
                   reward_alpha * model.outcome(state.env) + (1.0 - reward_alpha) * v, v)


def step_search(model: StepModel, params: Any, key: Array, root_env: Any, *, num_steps: int,
                step_len: int, num_candidates: int, num_simulations: int, w_exp: float = 1.0,
                reward_alpha: float = 0.5, dirichlet_fraction: float = 0.0,
                backup: str = "paper", child_values: str = "min", prior: str = "softmax",
                length_penalty: float = 1.25, reroot_simulations: int = 0) -> SearchResult:
  """MCTS over steps for a batch of B prompts (mctx's batch axis); jittable.

  Args:
    model: the `StepModel`.
    params: the policy's (and self-evaluator's) parameters, passed to `model`'s functions.
    key: PRNG key.
    root_env: the environment state of each prompt, a pytree with leading axis B.
    num_steps: D, the depth limit (a response is D steps).
    step_len: tokens per step. num_candidates: K >= 2 sampled steps per node.
    num_simulations: mctx simulations at the root (each expands at most one node).
    w_exp: the PUCT exploration weight (1 in the paper). reward_alpha: the outcome weight.
    dirichlet_fraction: root prior noise of `mctx.muzero_policy` (0: none, as in the paper;
      only with the default selection).
    backup: "paper" (default) or "mctx": which backed-up values give the reported Q (see above).
    child_values: "min" (default, mctx) or "expansion" (the code's: children valued at expansion).
    prior: "softmax" (default) or "length_normalized" (the code's exp(sum logp / L^length_penalty)).
    length_penalty: the exponent of the length normalisation (1.25 in the code), >= 0.
    reroot_simulations: R >= 0 simulations re-rooted at each depth 1..D-1 of the principal path
      (0: none); the search runs num_simulations + (D - 1) R simulations in all.
  """
  validation.check_option("backup", backup, BACKUPS)
  validation.check_option("child_values", child_values, CHILD_VALUES)
  validation.check_option("prior", prior, PRIORS)
  for name, v in (("num_steps", num_steps), ("step_len", step_len),
                  ("num_simulations", num_simulations)):
    if not isinstance(v, int) or v < 1:
      raise ValueError(f"`{name}` must be a positive int, got {v!r}.")
  if not isinstance(reroot_simulations, int) or reroot_simulations < 0:
    raise ValueError(f"`reroot_simulations` must be an int >= 0, got {reroot_simulations!r}.")
  if not isinstance(num_candidates, int) or num_candidates < 2:
    raise ValueError(f"`num_candidates` must be an int >= 2, got {num_candidates!r}.")
  validation.check_positive("w_exp", w_exp)
  validation.check_positive("length_penalty", length_penalty, allow_zero=True)
  if not 0.0 <= reward_alpha <= 1.0:
    raise ValueError(f"`reward_alpha` must be in [0, 1], got {reward_alpha!r}.")
  custom = child_values != "min" or prior != "softmax" or reroot_simulations > 0
  if custom and dirichlet_fraction != 0.0:
    raise ValueError("`dirichlet_fraction` must be 0 with child_values / prior / "
                     "reroot_simulations other than the defaults.")
  leaves = jax.tree_util.tree_leaves(root_env)
  if not leaves or any(getattr(x, "ndim", 0) < 1 for x in leaves):
    raise ValueError("`root_env` must be a pytree of arrays with a leading prompt axis.")
  b = leaves[0].shape[0]
  expansion = child_values == "expansion"
  k_root, k_search = jax.random.split(key)

  def expand_one(key, state):
    steps, logp = model.propose(params, key, state)
    steps = steps.astype(jnp.int32)
    value = _value(model, params, state, num_steps, reward_alpha)
    if expansion:  # the K children's values: their steps are already sampled, no extra tokens
      kids = jax.vmap(lambda s: _child(model, state, s))(steps)
      kid_values = jax.vmap(lambda c: _value(model, params, c, num_steps, reward_alpha))(kids)
    else:
      kid_values = jnp.zeros(logp.shape, jnp.float32)
    logits = logp / step_len ** length_penalty if prior == "length_normalized" else logp
    return _Node(state, steps, logp, kid_values.astype(jnp.float32)), value, logits

  roots = jax.vmap(lambda e: root_state(e, num_steps, step_len))(root_env)
  node, value, logits = jax.vmap(expand_one)(jax.random.split(k_root, b), roots)
  root = mctx.RootFnOutput(prior_logits=logits, value=value, embedding=node)

  def recurrent_fn(params_, key, action, parent: _Node):
    del params_
    step = jnp.take_along_axis(parent.steps, action[:, None, None], axis=1)[:, 0]
    child = jax.vmap(lambda s, a: _child(model, s, a))(parent.state, step)
    new, v, lg = jax.vmap(expand_one)(jax.random.split(key, b), child)
    out = mctx.RecurrentFnOutput(reward=jnp.zeros((b,)), discount=jnp.ones((b,)),
                                 prior_logits=lg, value=v)
    return out, new

  if custom:
    select = functools.partial(
        _select, num_steps=num_steps, w_exp=w_exp, backup=backup, expansion=expansion,
        prior=prior, first=num_simulations, per_step=reroot_simulations)
    tree = mctx.search(params, k_search, root=root, recurrent_fn=recurrent_fn,
                       root_action_selection_fn=lambda k, t, i: select(k, t, i, 0),
                       interior_action_selection_fn=select,
                       num_simulations=num_simulations + (num_steps - 1) * reroot_simulations,
                       max_depth=num_steps)
  else:
    qtransform = lambda tree, i: mctx.qtransform_by_min_max(tree, i, min_value=0.0, max_value=1.0)
    tree = mctx.muzero_policy(params, k_search, root, recurrent_fn, num_simulations,
                              max_depth=num_steps, qtransform=qtransform,
                              dirichlet_fraction=dirichlet_fraction, pb_c_init=w_exp,
                              pb_c_base=1e30).search_tree
  emb = tree.embeddings
  exists = tree.node_visits > 0
  nonterminal = emb.state.depth < num_steps
  sampled = jnp.sum(exists & nonterminal, axis=-1) * num_candidates * step_len
  unexpanded = tree.children_index == mctx.Tree.UNVISITED
  if expansion:  # unexpanded children: Q = their expansion value (reward 0, discount 1)
    tree = tree.replace(children_values=jnp.where(unexpanded, emb.child_values,
                                                  tree.children_values),
                        children_discounts=jnp.where(unexpanded, 1.0, tree.children_discounts))
  if backup == "paper":
    tree = tree.replace(children_values=paper_backup(tree, num_steps, expansion=expansion))
  cand = jax.vmap(lambda t: _principal_path(t, num_steps, step_len, expansion))(tree)
  return SearchResult(tree, *cand, sampled.astype(jnp.int32))


def _paper_values(tree, num_steps, expansion):
  """Unbatched `paper_backup`: [N, K] V(child) of every (node, action)."""
  depth = tree.embeddings.state.depth  # [N]
  idx = tree.children_index  # [N, K]
  expanded = idx != mctx.Tree.UNVISITED
  kid = jnp.maximum(idx, 0)
  weight = jnp.where(expanded, jnp.maximum(1, tree.children_visits), 0).astype(jnp.float32)
  fallback = 0.0
  if expansion:  # every child of an existing non-terminal node has its expansion value
    parent_ok = (tree.node_visits > 0) & (depth < num_steps)
    weight = jnp.where(expanded, weight, parent_ok[:, None].astype(jnp.float32))
    fallback = tree.embeddings.child_values
  # mctx leaves reward 0 and discount 0 at unexpanded children: discount 1 there (gamma = 1).
  discount = jnp.where(expanded, tree.children_discounts, 1.0)
  values = tree.raw_values
  for d in range(num_steps - 1, -1, -1):  # leaves first; every node's children are one deeper
    q = tree.children_rewards + discount * jnp.where(expanded, values[kid], fallback)
    total = jnp.sum(weight, axis=-1)
    backed = jnp.sum(weight * q, axis=-1) / jnp.maximum(total, 1e-12)
    values = jnp.where((depth == d) & (total > 0), backed, values)
  return jnp.where(expanded, values[kid], fallback)


def paper_backup(tree, num_steps: int, expansion: bool = False) -> Array:
  """Children values under the paper's back-up rule, [B, N, K] (see the module docstring).

  Args:
    tree: a batched mctx `Tree` made by `step_search` (its embeddings hold each node's depth).
    num_steps: D, the depth limit.
    expansion: True for child_values="expansion": unexpanded children of an existing
      non-terminal node count with weight 1 and their expansion value (the code's back-up over
      all K children); False: the sum runs over expanded children only.
  Returns V(child) for every (node, action), 0 where the child was never expanded (its expansion
  value with `expansion`); with the tree's `children_rewards` and `children_discounts` it gives
  Q = r + gamma V.
  """
  return jax.vmap(lambda t: _paper_values(t, num_steps, expansion))(tree)


def puct_scores(tree, node_index, *, num_steps: int, w_exp: float, backup: str,
                expansion: bool, prior: str) -> Array:
  """[K] the code's PUCT score Q + w_exp p sqrt(N(s)) / (1 + N(s, a)) of each child (`mcts.py`
  `_puct`), for an unbatched mctx `tree` of `step_search` and a scalar `node_index`.

  Q of a visited child: the `backup` rule's ("paper": recomputed on the whole tree; "mctx": mctx's
  running mean); of an unvisited one: its expansion value if `expansion`, else 0 (the minimum).
  p: exp(prior logit) for prior "length_normalized" (the logits are sum logp / L^1.25), else the
  softmax over the K candidates.
  """
  visits = tree.children_visits[node_index]
  if backup == "paper":
    q = _paper_values(tree, num_steps, expansion)[node_index]
  else:
    q = tree.qvalues(node_index)
  q = jnp.where(visits > 0, q, tree.embeddings.child_values[node_index] if expansion else 0.0)
  logits = tree.children_prior_logits[node_index]
  p = jnp.exp(logits) if prior == "length_normalized" else jax.nn.softmax(logits)
  return q + w_exp * p * jnp.sqrt(tree.node_visits[node_index]) / (visits + 1)


def _select(key, tree, node_index, depth, *, first, per_step, **kwargs):
  """mctx action selection (unbatched): argmax of `puct_scores` (mctx's 1e-7 tie noise); while
  re-rooted at depth j (simulation `first` + (j - 1) per_step on), the most-visited child above j.
  """
  score = puct_scores(tree, node_index, **kwargs)
  action = jnp.argmax(score + 1e-7 * jax.random.uniform(key, score.shape))
  if per_step:
    done = tree.node_visits[mctx.Tree.ROOT_INDEX] - 1  # simulations finished so far
    phase = jnp.where(done >= first, 1 + (done - first) // per_step, 0)
    action = jnp.where(depth < phase, jnp.argmax(tree.children_visits[node_index]), action)
  return action.astype(jnp.int32)


def _siblings(tree, node, num_steps, step_len, expansion=False):
  """Unbatched: the K children of `node` as (sequences [K, T], lengths, Q, visits, available)."""
  emb = jax.tree.map(lambda x: x[node], tree.embeddings)
  visits = tree.children_visits[node]
  seqs = jax.vmap(lambda s: jax.lax.dynamic_update_slice(emb.state.tokens, s,
                                                         (emb.state.length,)))(emb.steps)
  lengths = jnp.full(visits.shape, emb.state.length + step_len, jnp.int32)
  expanded = tree.children_index[node] != mctx.Tree.UNVISITED
  available = ((expanded | expansion) & (node >= 0) & (tree.node_visits[node] > 0)
               & (emb.state.depth < num_steps))
  return seqs, lengths, tree.qvalues(node), visits, available


def _principal_path(tree, num_steps, step_len, expansion=False):
  """Unbatched: the K children of each node on the most-visited path, depths 0..D-1."""

  def body(node, _):
    out = _siblings(tree, node, num_steps, step_len, expansion)
    nxt = tree.children_index[node, jnp.argmax(out[3])]
    nxt = jnp.where((node >= 0) & (nxt != mctx.Tree.UNVISITED), nxt, -1)
    return nxt, out

  _, out = jax.lax.scan(body, jnp.asarray(0, jnp.int32), None, length=num_steps)
  return out


def all_sibling_sets(tree, num_steps: int, step_len: int, expansion: bool = False):
  """The K children of every node of a batched mctx `tree` made by `step_search`.

  An extension beyond the paper's code (which pairs siblings only along the chosen path): every
  expanded non-terminal node gives a sibling set. Returns (candidate_tokens [B, N, K, T],
  candidate_lengths [B, N, K], qvalues [B, N, K], visits [B, N, K], available [B, N, K]),
  N = the search's simulations + 1, ready for `step_dpo.build_pairs` after flattening B and N;
  `expansion`: True for a search run with child_values="expansion" (all K children available).
  """
  n = tree.node_visits.shape[-1]
  per_tree = lambda t: jax.vmap(lambda i: _siblings(t, i, num_steps, step_len, expansion))(
      jnp.arange(n, dtype=jnp.int32))
  return jax.vmap(per_tree)(tree)
