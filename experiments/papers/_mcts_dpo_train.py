"""The training program of the mcts_dpo reproduction (`experiments/papers/mcts_dpo.py`, whose
docstring describes the task, the methods, the budgets and the rule): one seed's run of a method
with a policy, vmapped over seeds under one jit.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.papers import _mcts_dpo_policies as policies
from experiments.papers._mcts_dpo_transformer import TransformerPolicy
from pgx_lab import types
from pgx_lab.estimators.preference import step_dpo
from pgx_lab.rollout.step_search import all_sibling_sets
from pgx_lab.rollout.step_search import step_search

TASK = dict(digits=3, num_steps=3, step_len=2, candidates=2)
# reward_alpha = 2/3: with `_mcts_dpo_policies.step_model` it gives the code's node values / 3.
HPARAMS = dict(beta=0.1, refresh_every=8, reward_alpha=2.0 / 3.0)
LEARNING_RATES = {"tabular": 0.05, "mlp": 3e-3, "transformer": 1e-3}
POLICIES = {"tabular": policies.TabularPolicy, "mlp": policies.MLPPolicy,
            "transformer": TransformerPolicy}
EVAL_EVERY = {"transformer": 6}  # exact accuracy after every 6th iteration only


def _dpo_update(policy, opt, hp, theta, ref, opt_state, tokens_w, tokens_l, mask_w, mask_l,
                targets, n_w, n_l, valid, conservative):
  """One Adam step on `step_dpo_loss` for pairs of [P, T] token rows of prompts `targets` [P]."""
  logp = jax.vmap(policy.token_logp, in_axes=(None, 0, 0))
  batch = types.PairBatch(mask_w, mask_l, logp(ref, tokens_w, targets),
                          logp(ref, tokens_l, targets))

  def loss_fn(th):
    return step_dpo.step_dpo_loss(logp(th, tokens_w, targets), logp(th, tokens_l, targets),
                                  batch, n_w, n_l, valid, beta=hp["beta"],
                                  conservative=conservative)[0]
  grads = jax.grad(loss_fn)(theta)
  updates, opt_state = opt.update(grads, opt_state, theta)
  return optax.apply_updates(theta, updates), opt_state


def train(task, policy_name, method, cfg, group, key):
  """One seed's run of `method` ("outcome" or a "step*" variant; `group` G for "outcome") with
  the policy `policy_name` ("mlp", "tabular" or "transformer") on the `policies.Task` `task`;
  `key` PRNG key.

  Returns (exact accuracy after each iteration [I] (after every EVAL_EVERY-th one for the
  transformer, [I / EVAL_EVERY]), cumulative sampled tokens [I+1] (index 0: the
  start), (valid pairs [I], mean applied label smoothing [I]), entropy (nats) of the final
  policy's responses); the start's accuracy comes from `policies.initial_accuracy`.
  """
  hp = HPARAMS
  policy = POLICIES[policy_name](task)
  opt = optax.adam(LEARNING_RATES[policy_name])
  model = policies.step_model(task, policy)
  theta = policy.init(jax.random.fold_in(key, 7))  # as `policies.initial_accuracy`
  table = (jnp.zeros((task.s + 1, task.d + 1, task.s + 1)),) * 2
  p = cfg["prompts"]

  def iteration(carry, key):
    theta, ref, opt_state, table, tokens, step = carry
    k_t, k_s = jax.random.split(key)
    targets = jax.random.randint(k_t, (p,), 0, task.s + 1)
    zeros = jnp.zeros((p,), jnp.int32)
    if method.startswith("step"):
      code = method == "step_code"  # the authors' search options (module docstring)
      extra = dict(child_values="expansion", prior="length_normalized",
                   reroot_simulations=math.ceil(cfg["simulations"] / 4)) if code else {}
      res = step_search(
          model, (theta, table), k_s, (targets, zeros), num_steps=task.d, step_len=task.k,
          num_candidates=task.c, num_simulations=cfg["simulations"],
          reward_alpha=hp["reward_alpha"], backup="mctx" if method == "step_mctx" else "paper",
          **extra)
      sets = (res.candidate_tokens, res.candidate_lengths, res.qvalues, res.visits,
              res.available)
      if method == "step_all":
        sets = all_sibling_sets(res.tree, task.d, task.k)
      if method != "step_nofilter":
        # --filter: keep a tree only if its final answer (best-Q child of the last path node)
        # is correct; a path that stops early has no answer and is dropped too.
        last_ok = res.available[:, -1]  # [P, K]
        right = (jnp.sum(res.candidate_tokens[:, -1], -1) == targets[:, None]) & last_ok
        best = jnp.argmax(jnp.where(last_ok, res.qvalues[:, -1], -jnp.inf), axis=-1)
        keep = jnp.take_along_axis(right, best[:, None], axis=1)[:, 0]  # [P]
        sets = sets[:4] + (sets[4] & keep[:, None, None],)
      n_sets = sets[0].shape[1]
      pairs = step_dpo.build_pairs(*[x.reshape((p * n_sets,) + x.shape[2:]) for x in sets])
      rep = jnp.repeat(targets, n_sets)
      theta_new, opt_state = _dpo_update(
          policy, opt, hp, theta, ref, opt_state, pairs.chosen_tokens, pairs.rejected_tokens,
          pairs.chosen_mask, pairs.rejected_mask, rep, pairs.chosen_visits,
          pairs.rejected_visits, pairs.valid, method != "step_plain")
      used = jnp.sum(res.sampled_tokens)
      n_pairs = jnp.sum(pairs.valid)
      smoothing = jnp.sum(pairs.valid * step_dpo.conservative_smoothing(
          pairs.chosen_visits, pairs.rejected_visits)) / jnp.maximum(n_pairs, 1)
      smoothing = smoothing * (method != "step_plain")  # the smoothing actually applied
      # Self-evaluation table: outcomes of the terminal nodes the search reached.
      st = res.tree.embeddings.state
      term = (res.tree.node_visits > 0) & (st.depth == task.d)  # [P, N]
      win = (st.env[1] == st.env[0]).astype(jnp.float32) * term
      bounds = jnp.cumsum(st.tokens, axis=-1)[..., task.k - 1::task.k]  # [P, N, D]
      bounds = jnp.concatenate([jnp.zeros_like(bounds[..., :1]), bounds[..., :-1]], -1)
      g = jnp.broadcast_to(targets[:, None, None], bounds.shape)
      j = jnp.broadcast_to(jnp.arange(task.d), bounds.shape)
      succ = table[0].at[g, j, bounds].add(jnp.broadcast_to(win[..., None], bounds.shape))
      count = table[1].at[g, j, bounds].add(
          jnp.broadcast_to(term[..., None].astype(jnp.float32), bounds.shape))
      # ... and the terminal states themselves (depth D, final sum).
      final = jnp.minimum(st.env[1], task.s)  # [P, N]
      g_term = jnp.broadcast_to(targets[:, None], final.shape)
      succ = succ.at[g_term, task.d, final].add(win)
      count = count.at[g_term, task.d, final].add(term.astype(jnp.float32))
      table = (succ, count)
    else:
      keys = jax.random.split(k_s, p * group).reshape(p, group)
      row = jnp.zeros((task.t,), jnp.int32)
      sample = lambda kk, g: policy.sample_tokens(theta, kk, g, row, 0, 0, task.t)[0]
      ys = jax.vmap(lambda ks, g: jax.vmap(lambda kk: sample(kk, g))(ks))(keys, targets)
      r = (jnp.sum(ys, -1) == targets[:, None]).astype(jnp.float32)  # [P, G]
      best, worst = jnp.argmax(r, -1), jnp.argmin(r, -1)
      pick = lambda i: jnp.take_along_axis(ys, i[:, None, None], 1)[:, 0]
      valid = jnp.max(r, -1) > jnp.min(r, -1)
      ones = jnp.ones((p, task.t))
      theta_new, opt_state = _dpo_update(
          policy, opt, hp, theta, ref, opt_state, pick(best), pick(worst), ones, ones, targets,
          jnp.ones((p,)), jnp.ones((p,)), valid, False)
      used = jnp.asarray(p * group * task.t)
      n_pairs = jnp.sum(valid)
      smoothing = jnp.zeros(())
    step = step + 1
    ref = step_dpo.refresh_reference(theta_new, ref, step, hp["refresh_every"])
    tokens = tokens + used
    carry = (theta_new, ref, opt_state, table, tokens, step)
    if every > 1:  # accuracy after the block instead (below)
      return carry, (tokens, (n_pairs, smoothing))
    return carry, (policy.accuracy(theta_new), tokens, (n_pairs, smoothing))

  carry = (theta, theta, opt.init(theta), table, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
  keys = jax.random.split(key, cfg["iterations"])
  every = EVAL_EVERY.get(policy_name, 1)
  if every > 1:  # the same iterations, exact accuracy after every `every`-th one only

    def block(carry, block_keys):
      carry, out = jax.lax.scan(iteration, carry, block_keys)
      return carry, (policy.accuracy(carry[0]), out)
    final, (acc, (tokens, n_pairs)) = jax.lax.scan(
        block, carry, keys.reshape((-1, every) + keys.shape[1:]))
    tokens, n_pairs = jax.tree_util.tree_map(lambda x: x.reshape(-1), (tokens, n_pairs))
  else:
    final, (acc, tokens, n_pairs) = jax.lax.scan(iteration, carry, keys)
  return (acc, jnp.concatenate([jnp.zeros((1,), jnp.int32), tokens]),
          n_pairs, policy.response_entropy(final[0]))


def run_method(task, policy_name, method, cfg, group, seed_base):
  """`train` vmapped over cfg["seeds"] seeds under one jit; numpy arrays with a seed axis."""
  keys = jax.random.split(jax.random.key(seed_base), cfg["seeds"])
  fn = jax.jit(jax.vmap(lambda k: train(task, policy_name, method, cfg, group, k)))
  acc, tokens, (pairs, smoothing), entropy = fn(keys)
  init = policies.initial_accuracy(POLICIES[policy_name](task), keys)
  acc = jnp.concatenate([init[:, None], acc], axis=1)
  tokens = tokens[:, ::EVAL_EVERY.get(policy_name, 1)]  # the budgets where accuracy was taken
  return tuple(np.asarray(x) for x in (acc, tokens, pairs, smoothing, entropy))
