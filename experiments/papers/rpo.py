r"""RPO (Liu et al. 2024, arXiv 2405.16436): the SFT term stops DPO's over-optimisation on a bandit.

Claim (PAPERS.md, row rpo): with a noisy reward learned from few pairs, DPO's true reward falls as
it trains (over-optimisation) while RPO's does not.

The toy (spec llm_post_training.md section 10 (d)), one seed = one data set over P = 16 prompts:
  * each prompt is a K = 20 armed bandit (responses = arms) with true rewards r*(a) ~ N(0, 1);
  * the baseline / SFT policy pi_base = pi_ref covers 5 random arms well (0.8 of the mass, 0.16
    each) and the other 15 rarely (0.2 of the mass, about 0.013 each);
  * N = 30 pairs per prompt, both responses drawn from pi_base, labelled by Bradley-Terry with the
    true reward, P(y1 > y2) = sigmoid(r*(y1) - r*(y2)): few, noisy comparisons, rarely covered
    arms seen once or twice (the "learned reward" is DPO's implicit reward from these pairs);
  * a tabular softmax policy starts at pi_ref and trains full-batch on the fixed pairs with Adam
    (learning rate 0.01, no decay) for `steps` steps, beta = 0.1, with
      DPO  pairwise.dpo(beta)                    and
      RPO  pairwise.rpo(beta, eta, "sum")        (pi_base samples = the chosen responses).
The score is the exact true reward J(pi) = mean over prompts of sum_a pi(a) r*(a), tracked every
`eval_every` steps; "drop" = max over the run of J minus J at the end, per seed. Also tracked:
the mean log-prob of the chosen responses (the paper's Figure 1 shows DPO lowering it).

Choices fixed before the first run (not tuned): K, the 5/15 coverage split, N = 30, beta = 0.1,
Adam 0.01, eta = 1 for the claim's RPO, and the thresholds below. With eta = 1 the SFT term
eta * beta * NLL is about 0.1 * 2.3 = 0.23 at the start against DPO's log 2 = 0.69, the same
order as in LLM runs where a small eta multiplies a summed NLL of hundreds of tokens (an
argument, not the paper's setting). eta = 0.1 and 10 are reported beside it at full size and
are not part of the claim.
The paper's own eta values, and whether its SFT term sums or averages token log-probs, are not
confirmed; with one-token responses sum and mean coincide.
"""

import time

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from experiments.papers import Claim  # noqa: E402
from experiments.papers import save_artifacts  # noqa: E402
from pgx_lab import PairBatch  # noqa: E402
from pgx_lab.estimators.preference import pairwise  # noqa: E402

K, COMMON, COMMON_MASS, PROMPTS, PAIRS, BETA, LR = 20, 5, 0.8, 16, 30, 0.1, 0.01
CLAIM_ETA = 1.0
DPO_MIN_DROP, RPO_MAX_DROP_FRACTION = 0.03, 0.25     # the claim's thresholds, fixed beforehand
CONFIGS = {
    "small": dict(seeds=3, steps=3000, eval_every=100, etas=(CLAIM_ETA,)),
    "full": dict(seeds=10, steps=4000, eval_every=100, etas=(0.1, CLAIM_ETA, 10.0)),
}


def make_data(key):
  """True rewards [P, K], log pi_base [P, K], chosen and rejected arms [P, N]."""
  kr, kc, k1, k2, k3 = jax.random.split(key, 5)
  reward = jax.random.normal(kr, (PROMPTS, K))
  mass = jnp.where(jnp.arange(K) < COMMON, COMMON_MASS / COMMON, (1 - COMMON_MASS) / (K - COMMON))
  perms = jax.vmap(lambda k: jax.random.permutation(k, K))(jax.random.split(kc, PROMPTS))
  base_logp = jnp.log(mass[perms])                  # a random set of well-covered arms per prompt
  y1 = jax.random.categorical(k1, base_logp[:, None, :], shape=(PROMPTS, PAIRS))
  y2 = jax.random.categorical(k2, base_logp[:, None, :], shape=(PROMPTS, PAIRS))
  r1 = jnp.take_along_axis(reward, y1, 1)
  r2 = jnp.take_along_axis(reward, y2, 1)
  first_wins = jax.random.uniform(k3, (PROMPTS, PAIRS)) < jax.nn.sigmoid(r1 - r2)
  return reward, base_logp, jnp.where(first_wins, y1, y2), jnp.where(first_wins, y2, y1)


def train(method_index, key, losses, cfg):
  """Trains losses[method_index] (a traced int) on one data set; returns (J [E], chosen logp [E])
  at steps 0, eval_every, ..., steps."""
  reward, base_logp, chosen, rejected = make_data(key)
  prompt = jnp.repeat(jnp.arange(PROMPTS), PAIRS)
  w, l = chosen.reshape(-1), rejected.reshape(-1)
  ones = jnp.ones((PROMPTS * PAIRS, 1))
  batch = PairBatch(ones, ones, base_logp[prompt, w][:, None], base_logp[prompt, l][:, None])

  def loss(theta, fn):
    logp = jax.nn.log_softmax(theta, -1)
    return fn(logp[prompt, w][:, None], logp[prompt, l][:, None], batch)[0]

  grads = [jax.grad(lambda th, fn=fn: loss(th, fn)) for fn in losses]
  opt = optax.adam(LR)

  def evaluate(theta):
    logp = jax.nn.log_softmax(theta, -1)
    return jnp.mean(jnp.sum(jnp.exp(logp) * reward, -1)), jnp.mean(logp[prompt, w])

  def step(carry, _):
    theta, state = carry
    g = jax.lax.switch(method_index, grads, theta)
    updates, state = opt.update(g, state, theta)
    theta = optax.apply_updates(theta, updates)
    return (theta, state), evaluate(theta)

  theta = base_logp
  _, (j, lc) = jax.lax.scan(step, (theta, opt.init(theta)), None, cfg["steps"])
  j0, lc0 = evaluate(theta)
  e = cfg["eval_every"]
  return (jnp.concatenate([j0[None], j[e - 1::e]]), jnp.concatenate([lc0[None], lc[e - 1::e]]))


def _mean_std(x):
  return f"{np.mean(x):.3f} ± {np.std(x):.3f}"


def run(size: str, workdir: str) -> Claim:
  """Runs the toy at `size` ("small" or "full"), writes curves.png and metrics.json to `workdir`."""
  cfg = CONFIGS[size]
  names = ["DPO"] + [f"RPO eta={eta:g}" for eta in cfg["etas"]]
  losses = [pairwise.dpo(BETA)] + [pairwise.rpo(BETA, eta, "sum") for eta in cfg["etas"]]
  keys = jax.random.split(jax.random.PRNGKey(0), cfg["seeds"])
  t0 = time.perf_counter()
  per_seed = jax.vmap(lambda i, k: train(i, k, losses, cfg), in_axes=(None, 0))
  j, lc = jax.jit(jax.vmap(per_seed, in_axes=(0, None)))(jnp.arange(len(losses)), keys)
  j, lc = np.asarray(j), np.asarray(lc)                 # [methods, seeds, evals]
  seconds = time.perf_counter() - t0
  best_arm = float(np.mean([np.mean(np.max(make_data(k)[0], -1)) for k in keys]))

  drop = j.max(-1) - j[..., -1]                         # [methods, seeds]
  lines = ["| method | J start | J peak | J end (mean ± std) | drop peak→end (mean ± std) | "
           "seeds that drop > 0.01 | chosen log-prob start → end | seeds |",
           "|---|---|---|---|---|---|---|---|"]
  for m, name in enumerate(names):
    lines.append(f"| {name} | {j[m, :, 0].mean():.3f} | {_mean_std(j[m].max(-1))} | "
                 f"{_mean_std(j[m, :, -1])} | {_mean_std(drop[m])} | "
                 f"{int(np.sum(drop[m] > 0.01))}/{cfg['seeds']} | "
                 f"{lc[m, :, 0].mean():.2f} → {lc[m, :, -1].mean():.2f} | {cfg['seeds']} |")
  lines.append(f"\nBest arm's true reward (mean over prompts and seeds): {best_arm:.3f}; "
               f"{cfg['steps']} full-batch Adam steps on {PAIRS} pairs per prompt, beta={BETA}.")
  table = "\n".join(lines)

  rpo = names.index(f"RPO eta={CLAIM_ETA:g}")
  dpo_drop, rpo_drop = float(drop[0].mean()), float(drop[rpo].mean())
  holds = dpo_drop >= DPO_MIN_DROP and rpo_drop <= RPO_MAX_DROP_FRACTION * dpo_drop

  steps = np.arange(j.shape[-1]) * cfg["eval_every"]
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for m, name in enumerate(names):
    for ax, y in ((axes[0], j[m]), (axes[1], lc[m])):
      ax.plot(steps, y.mean(0), label=name)
      ax.fill_between(steps, y.mean(0) - y.std(0), y.mean(0) + y.std(0), alpha=0.2)
  axes[0].set_ylabel("true expected reward J(pi)")
  axes[1].set_ylabel("mean log pi(chosen)")
  for ax in axes:
    ax.set_xlabel("Adam step (full batch of the fixed pairs)")
    ax.legend()
  fig.suptitle(f"{K}-arm bandits, {PAIRS} BT-labelled pairs per prompt from pi_base")
  fig.tight_layout()
  plot, metrics = save_artifacts(workdir, fig, {
      "config": cfg, "methods": names, "seconds": seconds, "true_reward": j.tolist(),
      "chosen_logp": lc.tolist(), "best_arm_reward": best_arm})

  statement = (f"true-reward drop peak→end: DPO {dpo_drop:.3f} ± {drop[0].std():.3f} (>= "
               f"{DPO_MIN_DROP}) vs RPO eta={CLAIM_ETA:g} {rpo_drop:.3f} ± {drop[rpo].std():.3f} "
               f"(<= {RPO_MAX_DROP_FRACTION} x DPO's); end J: DPO {j[0, :, -1].mean():.3f}, "
               f"RPO {j[rpo, :, -1].mean():.3f} ({cfg['seeds']} seeds x {PROMPTS} prompts)")
  return Claim(holds=holds, statement=statement, table=table, artifacts=(plot, metrics))
