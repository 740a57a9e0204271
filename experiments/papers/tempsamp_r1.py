r"""TempSamp-R1 (Li et al., NeurIPS 2025, arXiv 2509.18056) on 1-D interval prediction.

Claim (PAPERS.md, row tempsamp_r1): on interval prediction with IoU reward, GRPO stalls; adding the
ground-truth member makes it learn; the soft advantage lowers update variance against the linear
one.

The toy (spec llm_post_training.md section 9 (d)). A timeline of N bins; a context is a target
interval [s*, e*] (every interval of length 1..L). The policy is tabular and factorised over the
two tokens, start s ~ softmax(theta_s[c]) and end e ~ softmax(theta_e[c]); e < s is an invalid
answer (IoU 0). Reward = IoU of [s, e] with [s*, e*] in bins. Like a model whose guesses are
narrow and mislocated, the initial policy puts a narrow bump (width ~1.5 bins) at a random
location per context, unrelated to the target, so most groups have all-zero IoU.
Each update: every context gets a group of G samples; one SGD step on GRPO's loss
(`presets.grpo(unbiased_std=True)`, advantage from `tempsamp.advantage_part`) with
  GRPO         plain groups, linear IoU reward;
  GRPO+GT      the ground truth replaces the last slot of every group (tempsamp.inject_ground_truth,
               re-implementation reading), linear IoU;
  GRPO+GT+soft the same with the soft reward transform (tau 0.8, alpha 1).
One step per batch, so old_logp = sg(logp) for every row and the "on_policy" and "no_is" ratios of
the GT row coincide here (both are 1 in value).
Scores: the exact expected IoU of the policy averaged over all contexts, after every update.
Update variance: at fixed parameters (checkpoints at 1/4, 1/2, 3/4 of each GT run, soft and
linear), K independent batches, the gradient under the soft and the linear transform on the same
samples; trace of the covariance of the gradient over the K batches (with plain SGD the update is
lr * gradient, so this is the update variance up to lr^2); ratio = sum over checkpoints soft /
sum linear, per seed.

Thresholds, fixed before the first run:
  stalls: GRPO's mean expected IoU gains less than STALL_MAX = 0.10 over its initial value;
  learns: GRPO+GT (linear) gains at least LEARN_MIN = 0.30 and ends above GRPO;
  variance: the mean over seeds of the soft / linear variance ratio is <= VAR_RATIO_MAX = 0.9.

Outcome at full size (5 seeds, 32 bins, 300 updates, ~10 s): the claim FAILS on two of its three
parts. The GT member does make GRPO learn (expected IoU gain 0.694 ± 0.033 against GRPO's
0.179 ± 0.009), but GRPO alone does not stall by the fixed threshold (gain 0.179 >= 0.10: the
contexts whose initial bump already overlaps the target get non-zero IoU in some rollouts and are
learned; the others, with all-zero groups, stay where they started), and the soft transform does not lower the update
variance (soft / linear 1.013 ± 0.001). The reason for the latter is visible in the maths: the
group z-score is invariant to affine maps of the reward, the soft ramp is close to affine on
[0, tau) (slope 1.29 at 0, 0.58 at tau), and in a group of G - 1 mostly-zero rollouts plus the GT
the transform leaves the advantages (nearly) unchanged; it only differs once rollouts spread over
IoU, and there the compressed top makes near-GT rollouts tie with the GT and the z-score scales
the remaining differences back up. Nothing was tuned after the first run.
"""

import os

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.papers import Claim, save_artifacts  # noqa: E402
from pgx_lab import types  # noqa: E402
from pgx_lab.estimators import presets  # noqa: E402
from pgx_lab.estimators import tempsamp  # noqa: E402

STALL_MAX, LEARN_MIN, VAR_RATIO_MAX = 0.10, 0.30, 0.9
G, LR, SIGMA = 8, 0.5, 1.5
SIZES = {"small": dict(bins=16, max_len=3, updates=80, seeds=2, k=32),
         "full": dict(bins=32, max_len=4, updates=300, seeds=5, k=64)}
METHODS = ("grpo", "grpo_gt", "grpo_gt_soft")


def _contexts(bins, max_len):
  return np.array([(s, s + l - 1) for l in range(1, max_len + 1) for s in range(bins - l + 1)],
                  np.int32)


def _iou(s, e, ts, te):
  """IoU in bins of [s, e] with [ts, te] (arrays broadcast); 0 when e < s."""
  inter = jnp.maximum(0, jnp.minimum(e, te) - jnp.maximum(s, ts) + 1)
  union = (e - s + 1) + (te - ts + 1) - inter
  return jnp.where(e >= s, inter / jnp.maximum(union, 1), 0.0).astype(jnp.float32)


def make_run(bins, max_len, updates, k):
  """Returns run(key) -> dict of curves [3, updates + 1] and variance ratios (one seed)."""
  ctx = jnp.asarray(_contexts(bins, max_len))
  c = ctx.shape[0]
  grid = jnp.arange(bins)
  iou_table = _iou(grid[None, :, None], grid[None, None, :], ctx[:, 0, None, None],
                   ctx[:, 1, None, None])                                   # [C, N, N]
  gids = jnp.repeat(jnp.arange(c, dtype=jnp.int32) * G, G)
  ests = {t: presets.grpo(unbiased_std=True).replace(advantage=tempsamp.advantage_part(t))
          for t in tempsamp.TRANSFORMS}

  def expected_iou(p):
    ps, pe = jax.nn.softmax(p[0]), jax.nn.softmax(p[1])
    return jnp.mean(jnp.einsum("cs,ce,cse->c", ps, pe, iou_table))

  def sample(p, key, gt):
    ks, ke = jax.random.split(key)
    s = jax.random.categorical(ks, p[0][:, None, :], shape=(c, G)).reshape(-1)
    e = jax.random.categorical(ke, p[1][:, None, :], shape=(c, G)).reshape(-1)
    tokens = jnp.stack([s, e], 1).astype(jnp.int32)
    cid = jnp.repeat(jnp.arange(c), G)
    rewards = _iou(s, e, ctx[cid, 0], ctx[cid, 1])
    if gt:
      out = tempsamp.inject_ground_truth(tokens, jnp.ones((c * G, 2)), rewards, gids, ctx,
                                         jnp.ones((c, 2)), jnp.ones((c,)), group_size=G)
      tokens, rewards = out["tokens"], out["rewards"]
    return tokens, rewards, cid

  def grad(p, tokens, rewards, cid, transform):
    def loss(p):
      logp = jnp.stack([jax.nn.log_softmax(p[0])[cid, tokens[:, 0]],
                        jax.nn.log_softmax(p[1])[cid, tokens[:, 1]]], 1)
      batch = types.SequenceBatch(mask=jnp.ones_like(logp), old_logp=jax.lax.stop_gradient(logp),
                                  rewards=rewards, group_ids=gids)
      return ests[transform](logp, batch)[0]
    return jax.grad(loss)(p)

  def train(p0, key, gt, transform):
    def step(p, key):
      g = grad(p, *sample(p, key, gt), transform)
      p = jax.tree_util.tree_map(lambda a, b: a - LR * 2 * c * b, p, g)
      return p, expected_iou(p)

    def chunk(p, key):
      p, curve = jax.lax.scan(step, p, jax.random.split(key, updates // 4))
      return p, (p, curve)

    _, (ckpt, curves) = jax.lax.scan(chunk, p0, jax.random.split(key, 4))
    return curves.reshape(-1), jax.tree_util.tree_map(lambda x: x[:3], ckpt)

  def trace_cov(p, key):
    def one(key):
      batch = sample(p, key, True)
      flat = lambda g: jnp.concatenate([g[0].ravel(), g[1].ravel()])
      return flat(grad(p, *batch, "soft")), flat(grad(p, *batch, "linear"))
    gs, gl = jax.vmap(one)(jax.random.split(key, k))
    return jnp.sum(jnp.var(gs, 0)), jnp.sum(jnp.var(gl, 0))

  def run(key):
    kinit, kt, kv = jax.random.split(key, 3)
    loc = jax.random.randint(kinit, (c,), 0, bins - 1)
    p0 = (-(grid[None] - loc[:, None]) ** 2 / (2 * SIGMA ** 2),
          -(grid[None] - loc[:, None] - 1) ** 2 / (2 * SIGMA ** 2))
    p0 = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), p0)
    curves, ckpts = [], []
    for m, (gt, tr) in zip(METHODS, ((False, "linear"), (True, "linear"), (True, "soft"))):
      curve, ck = train(p0, kt, gt, tr)
      curves.append(jnp.concatenate([expected_iou(p0)[None], curve]))
      ckpts.append(ck)
    both = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), ckpts[1], ckpts[2])
    vs, vl = jax.vmap(trace_cov, in_axes=(0, None))(both, kv)
    return {"curves": jnp.stack(curves), "var_soft": vs, "var_linear": vl,
            "ratio": jnp.sum(vs) / jnp.maximum(jnp.sum(vl), 1e-30)}

  return run


def run(size: str, workdir: str) -> Claim:
  """Runs the three methods over seeds (vmapped, one jit) at `size`; writes a plot and JSON."""
  if size not in SIZES:
    raise ValueError(f"`size` must be one of {tuple(SIZES)}, got {size!r}.")
  cfg = SIZES[size]
  fn = jax.jit(jax.vmap(make_run(cfg["bins"], cfg["max_len"], cfg["updates"], cfg["k"])))
  out = jax.tree_util.tree_map(np.asarray, fn(jax.random.split(jax.random.key(0), cfg["seeds"])))
  curves, ratio = out["curves"], out["ratio"]                  # [S, 3, U+1], [S]
  init, final = curves[:, :, 0], curves[:, :, -1]
  gain = final - init
  stalls = gain[:, 0].mean() < STALL_MAX
  learns = gain[:, 1].mean() >= LEARN_MIN and final[:, 1].mean() > final[:, 0].mean()
  lower = ratio.mean() <= VAR_RATIO_MAX
  ms = lambda x: f"{x.mean():.3g} ± {x.std():.2g}"
  n = cfg["seeds"]
  rows = ["| method | initial IoU | final IoU | gain |", "|---|---|---|---|"]
  rows += [f"| {m} | {ms(init[:, i])} | {ms(final[:, i])} | {ms(gain[:, i])} |"
           for i, m in enumerate(METHODS)]
  rows += ["", "| update variance (trace cov of grad, GT runs' checkpoints) | soft | linear | "
           "soft / linear |", "|---|---|---|---|",
           f"| sum over 6 checkpoints | {ms(out['var_soft'].sum(1))} | "
           f"{ms(out['var_linear'].sum(1))} | {ms(ratio)} |",
           "", f"{n} seeds, mean ± std over seeds; size={size}, bins={cfg['bins']}, G={G}."]
  table = "\n".join(rows)
  os.makedirs(workdir, exist_ok=True)
  fig, ax = plt.subplots(figsize=(6, 4))
  for i, m in enumerate(METHODS):
    mu, sd = curves[:, i].mean(0), curves[:, i].std(0)
    ax.plot(mu, label=m)
    ax.fill_between(np.arange(mu.size), mu - sd, mu + sd, alpha=0.2)
  ax.set_xlabel("update")
  ax.set_ylabel("expected IoU")
  ax.legend()
  plot, metrics = save_artifacts(
      workdir, fig, {"init": init.tolist(), "final": final.tolist(), "ratio": ratio.tolist()},
      "tempsamp_r1_iou.png", "tempsamp_r1.json")
  statement = (f"GRPO IoU gain {gain[:, 0].mean():.3f} (stall < {STALL_MAX}: {bool(stalls)}); "
               f"GRPO+GT gain {gain[:, 1].mean():.3f} (>= {LEARN_MIN}: {bool(learns)}); "
               f"soft/linear update variance {ratio.mean():.3f} ± {ratio.std():.3f} "
               f"(<= {VAR_RATIO_MAX}: {bool(lower)}), {n} seeds")
  return Claim(holds=bool(stalls and learns and lower), statement=statement, table=table,
               artifacts=(plot, metrics))
