"""MCTS-DPO (Xie et al. 2024, arXiv 2405.00451) on a chain-of-digits task.

Claim (PAPERS.md, mcts_dpo): step-level pairs from tree search (mctx) improve accuracy faster per
sampled token than outcome-level DPO pairs.

Task (spec section 12(d)). A prompt is a target g in {0..S}; a response is D steps of `step_len`
digits in {0..V-1} (T = D * step_len tokens, S = T (V - 1)); reward 1 iff the digits sum to g.
Policy: tabular logits theta[g, t, running sum, V] (initialised uniform). Accuracy is exact: the
success probability of the policy, averaged over all targets, by dynamic programming over sums.

Step-level (MCTS-DPO): per iteration, `step_search` (mctx PUCT, w_exp = 1, K = 2 sampled candidate
steps per node, depth D) runs on a batch of prompts; values mix the exact-match outcome at
terminal nodes with a self-evaluation (reward_alpha = 0.5). The self-evaluation here is a learned
value table V[g, depth, running sum] (success frequency of the terminal nodes the search has
reached through that state, prior 1/2), costing no sampled tokens; it is learned only from the
search's own outcomes. Q for ranking: the paper's visit-weighted back-up (`paper_backup`).
Pairs: highest- vs lowest-Q children at every depth of the principal path (most-visited child),
suffix-only masks, conservative label smoothing from visit counts, beta 0.1.
Outcome-level baseline: G full responses per prompt sampled from the policy, best vs worst
(by reward, a pair only when they differ), plain DPO over the full response, beta 0.1.
Budget: every token the search samples is counted (K * step_len per expanded non-terminal node,
root included); G is the smallest group whose D * step_len * G tokens per prompt are at least the
search's mean per prompt, so the baseline never gets fewer tokens per iteration. Both refresh the
reference to the current policy every `refresh_every` updates. Seeds are vmapped; each run is one
lax.scan under jit. Comparison: accuracy interpolated at a common grid of sampled-token budgets.
"""

import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.papers import Claim
from pgx_lab import types
from pgx_lab.estimators.preference import step_dpo
from pgx_lab.rollout import step_search

SIZES = {
    "small": dict(seeds=2, iterations=15, prompts=8, simulations=8),
    "full": dict(seeds=5, iterations=120, prompts=32, simulations=14),
}
TASK = dict(digits=3, num_steps=3, step_len=2, candidates=2)
HPARAMS = dict(beta=0.1, learning_rate=0.05, refresh_every=8, reward_alpha=0.5)


class Digits:
  """The chain-of-digits task and its tabular policy (all functions unbatched unless noted)."""

  def __init__(self, digits, num_steps, step_len, candidates):
    self.v, self.d, self.k, self.c = digits, num_steps, step_len, candidates
    self.t = num_steps * step_len
    self.s = self.t * (digits - 1)

  def init(self):
    """Uniform policy: zero logits [S+1 targets, T positions, S+1 running sums, V digits]."""
    return jnp.zeros((self.s + 1, self.t, self.s + 1, self.v))

  def sample_tokens(self, theta, key, target, pos0, sum0, n):
    """Samples n digits from position pos0 and running sum sum0: ([n] int32, summed log-prob)."""
    def body(carry, key):
      pos, s = carry
      logits = theta[target, jnp.minimum(pos, self.t - 1), jnp.minimum(s, self.s)]
      y = jax.random.categorical(key, logits)
      return (pos + 1, s + y), (y, jax.nn.log_softmax(logits)[y])
    _, (ys, lps) = jax.lax.scan(body, (pos0, sum0), jax.random.split(key, n))
    return ys.astype(jnp.int32), jnp.sum(lps)

  def token_logp(self, theta, tokens, target):
    """[T] log pi(y_t | g, t, sum of y_<t) of a full-length token row."""
    sums = jnp.minimum(jnp.cumsum(tokens) - tokens, self.s)
    logits = theta[target, jnp.arange(self.t), sums]
    return jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, None], axis=-1)[:, 0]

  def accuracy(self, theta):
    """Exact success probability averaged over all targets."""
    def one(g):
      def body(p, t):
        probs = jax.nn.softmax(theta[g, t], axis=-1)  # [S+1, V]
        new = sum(jnp.pad(p * probs[:, y], (y, 0))[:self.s + 1] for y in range(self.v))
        return new, None
      p0 = jnp.zeros((self.s + 1,)).at[0].set(1.0)
      p, _ = jax.lax.scan(body, p0, jnp.arange(self.t))
      return p[g]
    return jnp.mean(jax.vmap(one)(jnp.arange(self.s + 1)))

  def model(self):
    """The `StepModel` for `step_search`; its params are (theta, (successes, counts))."""
    def propose(params, key, state):
      theta, _ = params
      target, s = state.env
      keys = jax.random.split(key, self.c)
      return jax.vmap(lambda kk: self.sample_tokens(theta, kk, target, state.length, s,
                                                     self.k))(keys)

    def env_step(env, step):
      return env[0], env[1] + jnp.sum(step)

    def outcome(env):
      return (env[0] == env[1]).astype(jnp.float32)

    def self_eval(params, state):
      _, (succ, count) = params
      idx = (state.env[0], jnp.minimum(state.depth, self.d), jnp.minimum(state.env[1], self.s))
      return (succ[idx] + 0.5) / (count[idx] + 1.0)

    return step_search.StepModel(propose, env_step, outcome, self_eval)


def _dpo_update(task, opt, hp, theta, ref, opt_state, tokens_w, tokens_l, mask_w, mask_l,
                targets, n_w, n_l, valid, conservative):
  """One Adam step on `step_dpo_loss` for pairs of [P, T] token rows of prompts `targets` [P]."""
  logp = jax.vmap(task.token_logp, in_axes=(None, 0, 0))
  batch = types.PairBatch(mask_w, mask_l, logp(ref, tokens_w, targets),
                          logp(ref, tokens_l, targets))

  def loss_fn(th):
    return step_dpo.step_dpo_loss(logp(th, tokens_w, targets), logp(th, tokens_l, targets),
                                  batch, n_w, n_l, valid, beta=hp["beta"],
                                  conservative=conservative)[0]
  grads = jax.grad(loss_fn)(theta)
  updates, opt_state = opt.update(grads, opt_state, theta)
  return optax.apply_updates(theta, updates), opt_state


def _train(task, method, cfg, group, key):
  """One seed's run of `method` ("outcome" or a "step*" variant; `group` G for "outcome").

  Returns (exact accuracy [I+1], cumulative sampled tokens [I+1], (valid pairs [I], mean applied
  label smoothing [I])), index 0 being the initial policy.
  """
  hp = HPARAMS
  opt = optax.adam(hp["learning_rate"])
  model = task.model()
  theta = task.init()
  table = (jnp.zeros((task.s + 1, task.d + 1, task.s + 1)),) * 2
  p = cfg["prompts"]

  def iteration(carry, key):
    theta, ref, opt_state, table, tokens, step = carry
    k_t, k_s = jax.random.split(key)
    targets = jax.random.randint(k_t, (p,), 0, task.s + 1)
    zeros = jnp.zeros((p,), jnp.int32)
    if method.startswith("step"):
      res = step_search.step_search(
          model, (theta, table), k_s, (targets, zeros), num_steps=task.d, step_len=task.k,
          num_candidates=task.c, num_simulations=cfg["simulations"],
          reward_alpha=hp["reward_alpha"], backup="mctx" if method == "step_mctx" else "paper")
      sets = (res.candidate_tokens, res.candidate_lengths, res.qvalues, res.visits,
              res.available)
      if method == "step_all":
        sets = step_search.all_sibling_sets(res.tree, task.d, task.k)
      n_sets = sets[0].shape[1]
      pairs = step_dpo.build_pairs(*[x.reshape((p * n_sets,) + x.shape[2:]) for x in sets])
      rep = jnp.repeat(targets, n_sets)
      theta_new, opt_state = _dpo_update(
          task, opt, hp, theta, ref, opt_state, pairs.chosen_tokens, pairs.rejected_tokens,
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
      table = (succ, count)
    else:
      keys = jax.random.split(k_s, p * group).reshape(p, group)
      sample = lambda kk, g: task.sample_tokens(theta, kk, g, 0, 0, task.t)[0]
      ys = jax.vmap(lambda ks, g: jax.vmap(lambda kk: sample(kk, g))(ks))(keys, targets)
      r = (jnp.sum(ys, -1) == targets[:, None]).astype(jnp.float32)  # [P, G]
      best, worst = jnp.argmax(r, -1), jnp.argmin(r, -1)
      pick = lambda i: jnp.take_along_axis(ys, i[:, None, None], 1)[:, 0]
      valid = jnp.max(r, -1) > jnp.min(r, -1)
      ones = jnp.ones((p, task.t))
      theta_new, opt_state = _dpo_update(
          task, opt, hp, theta, ref, opt_state, pick(best), pick(worst), ones, ones, targets,
          jnp.ones((p,)), jnp.ones((p,)), valid, False)
      used = jnp.asarray(p * group * task.t)
      n_pairs = jnp.sum(valid)
      smoothing = jnp.zeros(())
    step = step + 1
    ref = step_dpo.refresh_reference(theta_new, ref, step, hp["refresh_every"])
    tokens = tokens + used
    carry = (theta_new, ref, opt_state, table, tokens, step)
    return carry, (task.accuracy(theta_new), tokens, (n_pairs, smoothing))

  carry = (theta, theta, opt.init(theta), table, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
  _, (acc, tokens, n_pairs) = jax.lax.scan(iteration, carry,
                                           jax.random.split(key, cfg["iterations"]))
  acc0 = task.accuracy(theta)[None]
  return (jnp.concatenate([acc0, acc]), jnp.concatenate([jnp.zeros((1,), jnp.int32), tokens]),
          n_pairs)


def _run_method(task, method, cfg, group, seed_base):
  """`_train` vmapped over cfg["seeds"] seeds under one jit; numpy arrays with a seed axis."""
  keys = jax.random.split(jax.random.key(seed_base), cfg["seeds"])
  fn = jax.jit(jax.vmap(lambda k: _train(task, method, cfg, group, k)))
  acc, tokens, (pairs, smoothing) = fn(keys)
  return tuple(np.asarray(x) for x in (acc, tokens, pairs, smoothing))


LABELS = {
    "step": "step-level, MCTS-DPO (path pairs, conservative)",
    "outcome": "outcome-level DPO (best vs worst of G)",
    "step_plain": "ablation: step-level, no label smoothing",
    "step_all": "ablation: step-level, pairs at every expanded node",
    "step_mctx": "ablation: step-level, Q from mctx's running-mean backup",
}


def run(size: str, workdir: str) -> Claim:
  """Runs the methods at `size` ("small" or "full"), writes the plot, returns the Claim.

  The claim compares "step" (the paper's recipe) with "outcome"; at full size two ablations of
  the step-level recipe are added to the table and the plot (they do not enter the claim).
  """
  if size not in SIZES:
    raise ValueError(f"`size` must be one of {tuple(SIZES)}, got {size!r}.")
  cfg = SIZES[size]
  task = Digits(**TASK)
  t0 = time.time()
  res = {"step": _run_method(task, "step", cfg, 0, 0)}
  per_prompt = res["step"][1][:, -1].mean() / (cfg["iterations"] * cfg["prompts"])
  group = max(2, math.ceil(per_prompt / task.t))
  res["outcome"] = _run_method(task, "outcome", cfg, group, 1)
  if size == "full":
    for i, name in enumerate(("step_plain", "step_all", "step_mctx")):
      res[name] = _run_method(task, name, cfg, 0, 2 + i)
  budgets = np.linspace(0, min(r[1][:, -1].min() for r in res.values()), 21)[1:]
  curves = {k: np.stack([np.interp(budgets, t, a) for a, t in zip(r[0], r[1])])
            for k, r in res.items()}
  auc = {k: c.mean(1) for k, c in curves.items()}
  end = {k: c[:, -1] for k, c in curves.items()}
  half = len(budgets) // 2 - 1
  holds = bool(auc["step"].mean() > auc["outcome"].mean()
               and end["step"].mean() > end["outcome"].mean())
  ms = lambda x: f"{x.mean():.3f} ± {x.std():.3f}"
  n = cfg["seeds"]
  rows = [
      "| method | tokens/iter | valid pairs/iter | mean eps | acc @ start | acc @ "
      f"{int(budgets[half])} tokens | acc @ {int(budgets[-1])} tokens | mean acc over budgets |",
      "|---|---|---|---|---|---|---|---|"]
  for k, (acc, tok, pairs, eps) in res.items():
    label = LABELS[k] + (f", G={group}" if k == "outcome" else "")
    rows.append(f"| {label} | {tok[:, -1].mean() / cfg['iterations']:.0f} | {pairs.mean():.1f} "
                f"| {eps.mean():.2f} | {acc[:, 0].mean():.3f} | {ms(curves[k][:, half])} "
                f"| {ms(end[k])} | {ms(auc[k])} |")
  rows += ["", f"{n} seeds (mean ± std over seeds), {cfg['iterations']} iterations x "
           f"{cfg['prompts']} prompts, {cfg['simulations']} simulations, K={task.c}; task: "
           f"{task.d} steps x {task.k} digits in 0..{task.v - 1}, {task.s + 1} targets; "
           "accuracy is exact, interpolated at common token budgets; "
           f"wall {time.time() - t0:.0f} s."]
  table = "\n".join(rows)
  os.makedirs(workdir, exist_ok=True)
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for k, c in curves.items():
    ax.plot(budgets, c.mean(0), label=LABELS[k], ls="--" if k.startswith("step_") else "-")
    ax.fill_between(budgets, c.mean(0) - c.std(0), c.mean(0) + c.std(0), alpha=0.2)
  ax.set_xlabel("sampled tokens per seed (search expansions included)")
  ax.set_ylabel("exact accuracy")
  ax.set_title(f"MCTS-DPO, chain of digits ({n} seeds)")
  ax.legend(fontsize=8)
  path = os.path.join(workdir, "mcts_dpo_accuracy.png")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  statement = (f"step-level MCTS pairs: mean accuracy over token budgets {ms(auc['step'])} vs "
               f"outcome-level {ms(auc['outcome'])}; at {int(budgets[-1])} tokens "
               f"{ms(end['step'])} vs {ms(end['outcome'])} ({n} seeds)")
  return Claim(holds=holds, statement=statement, table=table, artifacts=(path,))
