"""CAPO's own toy (spec llm_post_training.md sec. 7 (d)): a linear softmax policy on a contextual
bandit, where CAPO's LM-head model IS the whole model (Melo, Abate & Gal 2025, arXiv 2510.00819).

Bandit (one instance per seed). N contexts with fixed features h_c ~ N(0, I/d) (d = DIM); K = 50
actions; the policy is pi(a|c) = softmax(h_c^T W)_a with W [d, K] and NO bias (so `capo_mask` with
`with_bias=False`, top_k = K = all 50 candidates: its head model is exact). Reward: binary, 1 for
the N_GOOD = 3 actions with the largest teacher logits h_c^T W* (W* ~ N(0, 1), a realisable target),
0 otherwise; the reported reward is the EXACT expected reward J(W) = mean_c sum_a pi(a|c) R(c, a).
Start: W0 = beta (W* + Z), Z ~ N(0, 1) (a noisy "pretrained" policy), beta found by bisection so
that J(W0) = J_START = 0.25 (as the LM set-up starts from a pretrained policy in the 20-60% band).
Update: B contexts x G samples (a small batch: 4 x 8), GRPO advantages (unbiased group std, as the
recipes), the GRPO loss (one token per sequence, one update per batch, so the ratio is 1), the real
optimizer Adam (global-norm clip 1.0, eps 1e-8, as the HF trainer), the recipes' schedule (10%
warmup then cosine, `_capo_lm.lr_factor`), "/const" rows with a constant rate.

Rules fixed before any CAPO run (written 2026-11-25, before the bandit was first run):
  stable LR  a GRPO sweep (warmup+cosine) over SWEEP_LRS on separate sweep instances/seeds; the
             stable LR is the grid value with the highest mean last-20% J. Aggressive = 10x, 30x it.
             (The first small run had a grid ending at 0.3, which was its best value, so the grid
             was extended to 1e-3..10 in half-decades. Later, for compile time only, instances
             came from numpy instead of jax.random and contexts are drawn with replacement: new
             draws of the same distributions. No rule or constant changed; the verdict did not.)
  thresholds tau_F, tau_H (per aggressive LR) are the 95th percentiles of KL_t and |DeltaJ_t| over
             CAL_BATCHES batches sampled from each seed's start policy at that peak LR (tokens
             pooled over the seeds; then fixed for the whole run and every seed), with the
             predictive Adam state warmed by those batches (each batch's terms are computed with
             the state after the previous ones, all tokens kept; the first batch, whose empty state
             gives d_t = g_t, is not counted), because the empty-state step has another scale than
             every later Adam step. Reported beside it, not read by the claim: the LM set-up's rule
             (empty state, one batch: "/cal_empty") and the paper's tau_F 1e-4, tau_H 0.01
             ("/paper_tau").
  claim      for BOTH 10x and 30x: mean last-20% J of GRPO < J_START < mean last-20% J of CAPO,
             and CAPO rejects < 10% of tokens on average (PAPERS.md `capo`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.papers._capo_lm import lr_factor
from pgx_lab import types
from pgx_lab.estimators import presets
from pgx_lab.second_order import capo

SIZES = {
    "small": dict(seeds=2, sweep_seeds=2, updates=100, contexts=32),
    "full": dict(seeds=10, sweep_seeds=5, updates=400, contexts=64),
}
DIM, ACTIONS, N_GOOD, J_START = 16, 50, 3, 0.25
BATCH, GROUP = 4, 8
SWEEP_LRS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)
MULTS = (10, 30)
QUANTILE, CAL_BATCHES = 0.95, 8
PAPER_TAU = (1e-4, 0.01)
# (name, lr multiple, CAPO mask, warmup+cosine, tau source: "cal" | "cal_empty" | "paper")
METHODS = (("grpo_stable", 1, False, True, "cal"),
           ("grpo_10x", 10, False, True, "cal"), ("capo_10x", 10, True, True, "cal"),
           ("grpo_30x", 30, False, True, "cal"), ("capo_30x", 30, True, True, "cal"),
           ("capo_10x/cal_empty", 10, True, True, "cal_empty"),
           ("capo_30x/cal_empty", 30, True, True, "cal_empty"),
           ("capo_10x/paper_tau", 10, True, True, "paper"),
           ("capo_30x/paper_tau", 30, True, True, "paper"),
           ("grpo_stable/const", 1, False, False, "cal"),
           ("grpo_10x/const", 10, False, False, "cal"), ("capo_10x/const", 10, True, False, "cal"),
           ("grpo_30x/const", 30, False, False, "cal"), ("capo_30x/const", 30, True, False, "cal"))
COUNTS = ("tokens", "rejected", "pos", "rej_pos", "neg", "rej_neg", "rej_fisher", "rej_hessian",
          "p_all", "p_rej")


def exact_j(w, feats, rewards):
  """J(W) = mean_c sum_a pi(a|c) R(c, a): W [d, K], feats [N, d], rewards [N, K]."""
  return jnp.mean(jnp.sum(jax.nn.softmax(feats @ w, axis=-1) * rewards, axis=-1))


def _np_j(w, feats, rewards):
  z = feats @ w
  p = np.exp(z - z.max(-1, keepdims=True))
  return float(np.mean(np.sum(p * rewards, -1) / np.sum(p, -1)))


def make_instance(seed: int, contexts: int):
  """One bandit (numpy, float32): (feats [N, d], rewards [N, K] in {0, 1}, W0 [d, K] with
  J(W0) = J_START by bisection on beta in W0 = beta (W* + Z))."""
  rng = np.random.default_rng(seed)
  feats = rng.standard_normal((contexts, DIM)) / np.sqrt(DIM)
  teacher = rng.standard_normal((DIM, ACTIONS))
  top = np.argsort(-(feats @ teacher), axis=-1)[:, :N_GOOD]
  rewards = np.zeros((contexts, ACTIONS))
  np.put_along_axis(rewards, top, 1.0, axis=-1)
  base = teacher + rng.standard_normal((DIM, ACTIONS))
  lo, hi = 0.0, 50.0
  for _ in range(60):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if _np_j(mid * base, feats, rewards) < J_START else (lo, mid)
  if abs(_np_j(0.5 * (lo + hi) * base, feats, rewards) - J_START) > 1e-3:
    raise ValueError(f"`seed` {seed} gives a start policy that cannot reach J = {J_START}.")
  return tuple(x.astype(np.float32) for x in (feats, rewards, 0.5 * (lo + hi) * base))


def instances(seeds, contexts: int):
  """Stacked instances (feats [S, N, d], rewards [S, N, K], W0 [S, d, K]) for int `seeds` [S]."""
  parts = [make_instance(int(sd), contexts) for sd in seeds]
  return tuple(np.stack(x) for x in zip(*parts))


def sample_batch(key, w, feats, rewards):
  """B contexts (uniform, with replacement) x G actions from pi_W: (h [B*G, 1, d], actions
  [B*G, 1], SequenceBatch without log-probs: mask, rewards [B*G], group_ids [B*G], tokens)."""
  kc, ka = jax.random.split(key)
  ctx = jax.random.randint(kc, (BATCH,), 0, feats.shape[0])  # with replacement
  acts = jax.random.categorical(ka, feats[ctx] @ w, shape=(GROUP, BATCH)).T.reshape(-1)
  rows = jnp.repeat(ctx, GROUP)
  batch = types.SequenceBatch(mask=jnp.ones((BATCH * GROUP, 1)), rewards=rewards[rows, acts],
                              group_ids=jnp.repeat(jnp.arange(BATCH), GROUP),
                              tokens=acts[:, None])
  return feats[rows][:, None, :], acts[:, None], batch


ESTIMATOR = presets.grpo("grpo", unbiased_std=True)
OPTIMIZER = optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam(eps=1e-8))


def config(tau) -> capo.CapoConfig:
  """CAPO options of the bandit: all K candidates, no bias, thresholds tau = (tau_F, tau_H)."""
  return capo.CapoConfig(tau_fisher=tau[0], tau_hessian=tau[1], top_k=ACTIONS, with_bias=False)


def terms_on_batch(w, h, acts, batch, cstate, eta, tau):
  """capo_mask on one bandit batch: (keep [B*G, 1], next state, metrics incl. "terms")."""
  adv = ESTIMATOR.advantage(batch)
  return capo.capo_mask(h, w, None, acts, adv, batch.mask, cstate, eta, config(tau))


def train_one(inst, run_key, peak_lr, use_capo, cosine, tau, capo_eta, cfg):
  """One run: exact J after every update [U], rejection counts per update {COUNTS: [U]} and the
  per-token predictions "kl", "dj" (|DeltaJ_t|) [U, B*G]. CAPO's eta is the current real rate, or
  `capo_eta` where that is > 0 (calibration runs, which have a zero real rate)."""
  feats, rewards, w0 = inst
  updates = cfg["updates"]

  def loss_fn(w, h, acts, batch, cstate, lr):
    logp = jax.nn.log_softmax(h @ w, axis=-1)
    logp = jnp.take_along_axis(logp, acts[..., None], axis=-1)[..., 0]
    batch = batch.replace(old_logp=jax.lax.stop_gradient(logp))
    eta = jnp.where(capo_eta > 0, capo_eta, lr)
    keep, new_state, m = terms_on_batch(w, h, acts, batch, cstate, eta, tau)
    keep = jnp.where(use_capo, keep, batch.mask)
    cstate = jax.tree_util.tree_map(lambda a, b: jnp.where(use_capo, a, b), new_state, cstate)
    t, adv = m["terms"], ESTIMATOR.advantage(batch)[:, None]
    rej = batch.mask - keep
    counts = {"tokens": jnp.sum(batch.mask), "rejected": jnp.sum(rej),
              "pos": jnp.sum(adv > 0), "rej_pos": jnp.sum(rej * (adv > 0)),
              "neg": jnp.sum(adv < 0), "rej_neg": jnp.sum(rej * (adv < 0)),
              "rej_fisher": jnp.sum(rej * (t["kl"] >= tau[0])),
              "rej_hessian": jnp.sum(rej * (jnp.abs(t["delta_j"]) >= tau[1])),
              "p_all": jnp.sum(batch.mask * jnp.exp(batch.old_logp)),
              "p_rej": jnp.sum(rej * jnp.exp(batch.old_logp)),
              "kl": t["kl"][:, 0], "dj": jnp.abs(t["delta_j"][:, 0])}
    return capo.with_mask(ESTIMATOR, keep)(logp, batch)[0], (cstate, counts)

  def step(carry, key_t):
    w, opt_state, cstate = carry
    key, t = key_t
    lr = peak_lr * lr_factor(t, updates, cosine)
    h, acts, batch = sample_batch(key, w, feats, rewards)
    grad, (cstate, counts) = jax.grad(loss_fn, has_aux=True)(w, h, acts, batch, cstate, lr)
    upd, opt_state = OPTIMIZER.update(grad, opt_state, w)
    w = w - lr * upd
    return (w, opt_state, cstate), dict(counts, j=exact_j(w, feats, rewards))

  carry = (w0, OPTIMIZER.init(w0), capo.init_state(ACTIONS, DIM))
  steps = (jax.random.split(run_key, updates), jnp.arange(updates, dtype=jnp.float32))
  return jax.lax.scan(step, carry, steps)[1]


@functools.partial(jax.jit, static_argnames=("updates",))
def _train_jit(inst, run_keys, lrs, use, cos, taus, capo_eta, updates):
  cfg = {"updates": updates}
  return jax.vmap(lambda a, b, c, d, e, f, g: train_one(a, b, c, d, e, f, g, cfg))(
      inst, run_keys, lrs, use, cos, taus, capo_eta)


def train_runs(inst, run_keys, lrs, use, cos, taus, cfg, pad_to=0, capo_eta=None):
  """Flat batch of R runs, vmapped under one jit: `inst` a tuple of stacked instances (leading
  axis R, see `instances`), run_keys [R, 2], lrs/use/cos [R], taus [R, 2], `capo_eta` [R] (default
  0). The runs are padded (repeating the first) to `pad_to` so that every call of the module
  shares one compilation."""
  r = run_keys.shape[0]
  capo_eta = jnp.zeros((r,)) if capo_eta is None else capo_eta
  args = (tuple(jnp.asarray(x) for x in inst), run_keys, jnp.asarray(lrs, jnp.float32),
          jnp.asarray(use, bool), jnp.asarray(cos, bool), jnp.asarray(taus, jnp.float32),
          jnp.asarray(capo_eta, jnp.float32))
  if pad_to > r:
    args = jax.tree_util.tree_map(
        lambda a: jnp.concatenate([a, jnp.repeat(a[:1], pad_to - r, axis=0)]), args)
  out = _train_jit(*args, updates=cfg["updates"])
  return jax.tree_util.tree_map(lambda x: np.asarray(x[:r]), out)


def calibrate(inst, run_keys, cfg, etas, pad_to):
  """{(i, warm): (tau_F, tau_H)} for peak rate etas[i]: the QUANTILE of KL_t and |DeltaJ_t| over
  the tokens of CAL_BATCHES batches per instance at its start policy (runs with a zero real rate
  and CAPO's eta fixed to etas[i], all tokens kept), the predictive state warmed batch by batch
  (first batch not counted) if warm, else the first batch only (empty state)."""
  n, e = run_keys.shape[0], len(etas)
  rep = lambda x: jnp.repeat(jnp.asarray(x, jnp.float32), n)
  tile = lambda a: np.tile(a, (e,) + (1,) * (a.ndim - 1))
  out = train_runs(tuple(tile(x) for x in inst), tile(run_keys), rep([0.0] * e),
                   rep([True] * e) > 0, rep([False] * e) > 0, jnp.zeros((e * n, 2)), cfg,
                   pad_to=pad_to, capo_eta=rep(etas))
  kl = out["kl"].reshape(e, n, cfg["updates"], -1)[:, :, :CAL_BATCHES]
  dj = out["dj"].reshape(e, n, cfg["updates"], -1)[:, :, :CAL_BATCHES]
  q = lambda x: float(np.quantile(x, QUANTILE))
  pick = lambda x, i, warm: x[i, :, 1:] if warm else x[i, :, :1]
  return {(i, warm): (q(pick(kl, i, warm)), q(pick(dj, i, warm)))
          for i in range(e) for warm in (True, False)}


def _runs(methods, seeds_keys, lr_of, tau_of):
  """Flattened run arguments [len(methods) * seeds] for `train_runs` (method-major) from
  (instances, run keys [seeds, 2])."""
  inst, run = seeds_keys
  n = run.shape[0]
  rep = lambda x: jnp.repeat(jnp.asarray(x), n, axis=0)
  tile = lambda a: np.tile(a, (len(methods),) + (1,) * (a.ndim - 1))
  return (tuple(tile(x) for x in inst), tile(run),
          rep([lr_of(m) for m in methods]), rep([m[2] for m in methods]),
          rep([m[3] for m in methods]), rep(np.array([tau_of(m) for m in methods], np.float32)))


def run_bandit(size: str):
  """Sweep, calibration and the METHODS runs at `size`; returns (verdict, statement, table,
  curves {method: {"j": [seeds, U], counts...}}, info)."""
  cfg = SIZES[size]
  k_sweep, k_eval, k_cal = jax.random.split(jax.random.PRNGKey(1), 3)
  n_eval = cfg["seeds"]
  sweep_keys = (instances(1000 + np.arange(cfg["sweep_seeds"]), cfg["contexts"]),
                np.asarray(jax.random.split(k_sweep, cfg["sweep_seeds"])))
  eval_keys = (instances(np.arange(n_eval), cfg["contexts"]),
               np.asarray(jax.random.split(k_eval, n_eval)))
  u = cfg["updates"]
  last = slice(u - max(1, u // 5), u)
  sweep_methods = [(f"sweep_{lr:g}", lr, False, True, "cal") for lr in SWEEP_LRS]
  pad = len(METHODS) * cfg["seeds"]
  out = train_runs(*_runs(sweep_methods, sweep_keys, lambda m: m[1], lambda m: (0.0, 0.0)), cfg,
                   pad_to=pad)
  sweep = out["j"].reshape(len(SWEEP_LRS), cfg["sweep_seeds"], u)[:, :, last].mean((1, 2))
  lr0 = SWEEP_LRS[int(np.argmax(sweep))]
  cal = calibrate(eval_keys[0], np.asarray(jax.random.split(k_cal, n_eval)), cfg,
                  [k * lr0 for k in MULTS], pad)
  taus = {(MULTS[i], w): v for (i, w), v in cal.items()}
  tau_of = lambda m: (PAPER_TAU if m[4] == "paper" else
                      taus.get((m[1], m[4] == "cal"), (0.0, 0.0)))
  out = train_runs(*_runs(METHODS, eval_keys, lambda m: m[1] * lr0, tau_of), cfg, pad_to=pad)
  curves = {m[0]: {k: v.reshape((len(METHODS), cfg["seeds"]) + v.shape[1:])[i]
                  for k, v in out.items() if k not in ("kl", "dj")}
            for i, m in enumerate(METHODS)}
  rows, stats = [], {}
  for m in METHODS:
    c = curves[m[0]]
    j1 = c["j"][:, last].mean(1)
    drop = (np.maximum.accumulate(c["j"], axis=1) - c["j"]).max(1)
    tot = {k: c[k].sum() for k in COUNTS}
    rej = c["rejected"].sum(1) / c["tokens"].sum(1)
    stats[m[0]] = (j1, rej)
    frac = lambda a, b: f"{100 * tot[a] / max(tot[b], 1):.1f}"
    mean_p = lambda a, b: f"{tot[a] / max(tot[b], 1):.2f}"
    who = ("- | - | -" if not m[2] else f"{frac('rej_pos', 'pos')} / {frac('rej_neg', 'neg')} | "
           f"{frac('rej_fisher', 'rejected')} / {frac('rej_hessian', 'rejected')} | "
           f"{mean_p('p_rej', 'rejected')} / {mean_p('p_all', 'tokens')}")
    tau = f"{tau_of(m)[0]:.2e}, {tau_of(m)[1]:.2e}" if m[2] else "-"
    rows.append(f"| {m[0]} | {m[1] * lr0:.1e} {'warmup+cos' if m[3] else 'const'} | {tau} | "
                f"{c['j'][:, :max(1, u // 10)].mean():.3f} | {j1.mean():.3f} ± {j1.std():.3f} | "
                f"{drop.mean():.3f} | {100 * rej.mean():.1f} ± {100 * rej.std():.1f} | {who} |")
  verdict = all(stats[f"grpo_{k}x"][0].mean() < J_START < stats[f"capo_{k}x"][0].mean()
                and stats[f"capo_{k}x"][1].mean() < 0.10 for k in MULTS)
  sweep_txt = ", ".join(f"{lr:g}: {j:.3f}" for lr, j in zip(SWEEP_LRS, sweep))
  table = (f"Bandit: {cfg['contexts']} contexts, d = {DIM}, K = {ACTIONS}, {N_GOOD} good actions "
           f"(binary reward), batch {BATCH} x {GROUP}, {u} Adam updates, {cfg['seeds']} seeds; "
           f"exact J, start {J_START}. Stable-LR sweep (GRPO warmup+cos, last-20% J, "
           f"{cfg['sweep_seeds']} other seeds): {sweep_txt} -> stable LR {lr0:g}.\n\n"
           "| method | peak lr, schedule | tau_F, tau_H | J first 10% | J last 20% | max drop "
           "from peak | % tokens rejected | % rejected of A>0 / A<0 tokens | % of rejections "
           "by Fisher / Hessian test | mean pi(y_t) rejected / all |\n"
           "|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows))
  statement = (f"bandit (exact head model), stable lr {lr0:g}: last-20% J " + ", ".join(
      f"{k}x GRPO {stats[f'grpo_{k}x'][0].mean():.3f} vs CAPO {stats[f'capo_{k}x'][0].mean():.3f} "
      f"({100 * stats[f'capo_{k}x'][1].mean():.1f}% rejected)" for k in MULTS)
      + f", start {J_START} ({cfg['seeds']} seeds)")
  return verdict, statement, table, curves, {"stable_lr": lr0, "sweep": sweep.tolist(),
                                             "taus": {f"{k[0]}x_{'warm' if k[1] else 'empty'}":
                                                      v for k, v in taus.items()}}
