"""Second-order costs: HVP over gradient, and one (N-)HARPG iteration over one REINFORCE iteration.

    python -m benchmarks.second_order [--repeats=15] [--min-sample-ms=20] \
        [--models=mlp,transformer] [--transformer-batch=8,16,32] \
        [--out=results/bench/second_order.json]

Models (pgx_lab.models): the MLP policy `CategoricalPolicy(4 actions, hidden (64, 64))` on a batch
of B = 64 trajectories of T = 32 steps with 8-dim observations; the transformer
`TransformerConfig(vocab 32, max_len 64, d_model 64, 2 layers, 4 heads)` on B sequences of
64 tokens, B in --transformer-batch (default 8, 16, 32: on a CPU the ratios move with B, since
the gradient's and the HVP's working sets cross cache sizes at different B). The loss is the
(negated) GPOMDP surrogate of pgx_lab.second_order.score_hessian.

Cases, per model (every function jitted; rollouts excluded, the same batch is reused):
  grad         jax.grad of the loss
  hvp          pgx_lab.second_order.hvp.hvp of the loss along a random direction
  score_hvp    score_hessian_vp: (g, B v), the full score-function Hessian estimator's product
  reinforce    one REINFORCE iteration: grad of the REINFORCE surrogate + optax.sgd + apply
  harpg        one N-HARPG iteration: the loss gradient at theta_t, the score-function Hessian
               product B v (score_hessian_vp) at the interpolation point on the same batch (a real
               run samples a fresh batch there), the harpg transform, apply (t >= 1 branch)
Beside the timed HVP / grad ratio, XLA's flop counts of the two compiled functions
(`cost_analysis`): a machine-independent figure. Forward-over-reverse costs about 3x a gradient's
flops on a matmul-bound model (the tangent of each matmul in the forward and backward passes is
two matmuls), so a timed ratio under 2 is reached only where the step is bound by overheads.
Reported ratios (hvp / grad, harpg / reinforce) are medians over rounds of the per-round ratio of
the two functions timed in the same round (`benchmarks.estimators.time_round_robin`), so drift of
a shared machine cancels. Goals (issue 8): HVP under 2x a gradient; HARPG under 2.5x REINFORCE.
"""

import argparse
import datetime
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common
from benchmarks.estimators import machine, time_round_robin
from pgx_lab.models import mlp
from pgx_lab.models import transformer
from pgx_lab.second_order import harpg as harpg_lib
from pgx_lab.second_order import hvp as hvp_lib
from pgx_lab.second_order import score_hessian as sh

GAMMA = 0.99


def mlp_problem(seed=0, b=64, t=32, obs_dim=8, actions=4):
  """(params, logp_fn, rewards [B, T]) of the MLP policy on random trajectories."""
  rng = np.random.default_rng(seed)
  model = mlp.CategoricalPolicy(num_actions=actions, hidden_sizes=(64, 64))
  obs = jnp.asarray(rng.standard_normal((b, t, obs_dim)), jnp.float32)
  acts = jnp.asarray(rng.integers(0, actions, (b, t)), jnp.int32)
  params = model.init(jax.random.PRNGKey(seed), obs[:1, :1])

  def logp_fn(p):
    dist, _ = model.apply(p, obs)
    return mlp.log_prob(dist, acts)

  return params, logp_fn, jnp.asarray(rng.standard_normal((b, t)), jnp.float32)


def transformer_problem(seed=0, b=16, t=64):
  """(params, logp_fn, rewards [B, T-1]) of the small transformer on random token sequences."""
  rng = np.random.default_rng(seed)
  cfg = transformer.TransformerConfig(vocab_size=32, max_len=t, value_head=False)
  params = transformer.init_params(jax.random.PRNGKey(seed), cfg)
  tokens = jnp.asarray(rng.integers(0, 32, (b, t)), jnp.int32)
  logp_fn = lambda p: transformer.token_logp_and_entropy(p, cfg, tokens)[0]
  return params, logp_fn, jnp.asarray(rng.standard_normal((b, t - 1)), jnp.float32)


def functions(params, logp_fn, rewards, seed=0):
  """name -> (jitted fn, args) of the four cases on one problem."""
  loss = lambda p: -sh.gpomdp_surrogate(logp_fn(p), rewards, GAMMA)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  v = jax.tree.unflatten(tree, [1e-2 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
  ret = jnp.sum(rewards * GAMMA ** jnp.arange(rewards.shape[-1]), -1)
  reinforce_loss = lambda p: -jnp.mean(jnp.sum(logp_fn(p), -1) * ret)
  sgd = optax.sgd(1e-2)

  def reinforce_step(p, s):
    u, s = sgd.update(jax.grad(reinforce_loss)(p), s, p)
    return optax.apply_updates(p, u), s

  tx = harpg_lib.harpg(0.1)
  hvp_fn = lambda point, d: jax.tree.map(
      jnp.negative, sh.score_hessian_vp(logp_fn, point, d, rewards, GAMMA)[1])

  def harpg_step(p, s):
    u, s = tx.update(jax.grad(loss)(p), s, p, hvp_fn=hvp_fn)
    return optax.apply_updates(p, u), s

  h_state = tx.init(params)                                 # one update: later calls take t >= 1
  p1 = optax.apply_updates(params, v)
  h_state = h_state._replace(count=jnp.ones((), jnp.int32), d=v)
  return {
      "grad": (jax.jit(jax.grad(loss)), (params,)),
      "hvp": (jax.jit(lambda p, v: hvp_lib.hvp(loss, p, v)), (params, v)),
      "score_hvp": (jax.jit(lambda p, v: sh.score_hessian_vp(logp_fn, p, v, rewards, GAMMA)),
                    (params, v)),
      "reinforce": (jax.jit(reinforce_step), (params, sgd.init(params))),
      "harpg": (jax.jit(harpg_step), (p1, h_state)),
  }


def flops(fn, args) -> float:
  """XLA's flop count of the compiled `fn(*args)` (its cost analysis; 0 if it gives none)."""
  cost = fn.lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", 0.0))


def bench(name, problem, repeats, min_sample_s):
  """Times the four cases of one model; returns a result row (ms and paired ratios)."""
  fns = functions(*problem)
  # time_round_robin takes one argument tuple; give each function its own through a closure.
  wrapped = {k: (lambda f=f, a=a: f(*a)) for k, (f, a) in fns.items()}
  _, times, first, inner = time_round_robin(wrapped, (), repeats, min_sample_s)
  paired = lambda a, b: statistics.median(x / y for x, y in zip(times[a], times[b]))
  n_params = sum(x.size for x in jax.tree.leaves(problem[0]))
  grad_flops = flops(*fns["grad"])
  row = {"model": name, "params": int(n_params),
         "hvp_over_grad_flops": flops(*fns["hvp"]) / grad_flops if grad_flops else float("nan"),
         **{f"{k}_ms": 1e3 * statistics.median(v) for k, v in times.items()},
         "hvp_over_grad": paired("hvp", "grad"),
         "score_hvp_over_grad": paired("score_hvp", "grad"),
         "harpg_over_reinforce": paired("harpg", "reinforce"),
         "compile_s": first, "calls_per_sample": inner}
  print(f"  {name:17s} params {n_params:7d}  grad {row['grad_ms']:.3f} ms  hvp "
        f"{row['hvp_ms']:.3f} ms"
        f"  (x{row['hvp_over_grad']:.2f})  reinforce {row['reinforce_ms']:.3f} ms  harpg "
        f"{row['harpg_ms']:.3f} ms  (x{row['harpg_over_reinforce']:.2f})", flush=True)
  return row


def markdown_table(rows):
  """The rows as a markdown table."""
  out = ["| model | params | grad ms | HVP ms | HVP/grad (goal < 2) | HVP/grad in XLA flops | "
         "(g, Bv)/grad | REINFORCE ms | "
         "N-HARPG ms | HARPG/REINFORCE (goal < 2.5) |", "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    out.append(f"| {r['model']} | {r['params']} | {r['grad_ms']:.3f} | {r['hvp_ms']:.3f} | "
               f"{r['hvp_over_grad']:.2f} | {r['hvp_over_grad_flops']:.2f} | "
               f"{r['score_hvp_over_grad']:.2f} | "
               f"{r['reinforce_ms']:.3f} | {r['harpg_ms']:.3f} | "
               f"{r['harpg_over_reinforce']:.2f} |")
  return "\n".join(out)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  p.add_argument("--repeats", type=int, default=15, help="timing rounds (medians over rounds)")
  p.add_argument("--min-sample-ms", type=float, default=20.0,
                 help="a timing sample repeats a fast step until it lasts about this long")
  p.add_argument("--models", default="mlp,transformer", help="comma list of mlp, transformer")
  p.add_argument("--transformer-batch", default="8,16,32",
                 help="comma list of transformer batch sizes B (sequences of 64 tokens)")
  p.add_argument("--out", default="results/bench/second_order.json", help="JSON output path")
  args = p.parse_args(argv)
  if args.repeats < 1:
    p.error("--repeats must be >= 1")
  models = [m for m in args.models.split(",") if m]
  problems = {"mlp": mlp_problem, "transformer": transformer_problem}
  for m in models:
    if m not in problems:
      p.error(f"unknown model {m!r}")
  try:
    t_batches = [int(x) for x in args.transformer_batch.split(",") if x.strip()]
  except ValueError:
    p.error(f"--transformer-batch must be a comma list of ints, got {args.transformer_batch!r}")
  if not t_batches or min(t_batches) < 1:
    p.error("--transformer-batch needs positive batch sizes")
  cases = []
  for m in models:
    if m == "transformer":
      cases += [(f"transformer B={b}", lambda b=b: transformer_problem(b=b)) for b in t_batches]
    else:
      cases.append((m, problems[m]))
  start, load_before = time.perf_counter(), os.getloadavg()
  rows = [bench(name, make(), args.repeats, 1e-3 * args.min_sample_ms) for name, make in cases]
  elapsed, load_after = time.perf_counter() - start, os.getloadavg()
  table = markdown_table(rows)
  common.print_table(table, elapsed, load_before, load_after)
  result = {
      "command": " ".join(["python -m benchmarks.second_order"] + (sys.argv[1:] if argv is None
                                                                  else list(argv))),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "machine": machine(),
      "settings": {"repeats": args.repeats, "min_sample_ms": args.min_sample_ms,
                   "models": models, "transformer_batch": t_batches},
      "wall_s": elapsed, "loadavg_before": load_before, "loadavg_after": load_after,
      "rows": rows, "markdown": table,
  }
  if args.out:
    common.write_json(args.out, result)


if __name__ == "__main__":
  main()
