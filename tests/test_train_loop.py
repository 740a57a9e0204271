"""The training loops at tiny sizes: config validation before compiling, the exact J of the tabular
run against an independent recursion, in-process resume equal to an uninterrupted run (the
SIGKILL test and the incompatible-workdir refusal are in test_resume.py), and the GRPO / GSPO /
Dr.GRPO and PPO loops end to end."""

import os

import jax
import ml_collections
import numpy as np
import pytest

from experiments import train as train_bin
from experiments.configs import dr_grpo_tokens
from experiments.configs import grpo_tokens
from experiments.configs import gspo_tokens
from experiments.configs import ppo_cartpole
from experiments.configs import reinforce_tabular
from experiments.configs import validate
from pgx_lab.train import loop
from pgx_lab.train import loop_tabular
from pgx_lab.train.update import count_compilations

CONFIGS = {"reinforce_tabular": reinforce_tabular, "grpo_tokens": grpo_tokens,
           "gspo_tokens": gspo_tokens, "dr_grpo_tokens": dr_grpo_tokens,
           "ppo_cartpole": ppo_cartpole}


def tiny_tabular(**kw):
  c = reinforce_tabular.get_config()
  c.update(dict(num_updates=20, chunk_size=5, save_every=10, num_seeds=2, num_states=5,
                num_actions=3, branching=2, horizon=4, batch_size=8, learning_rate=0.3,
                progress=False, tensorboard=True), **kw)
  return c


def tiny_tokens(module, **kw):
  c = module.get_config()
  c.update(dict(num_updates=4, chunk_size=2, save_every=2, pretrain=False, d_model=16,
                num_layers=1, num_heads=2, prompts_per_batch=4, group_size=4, epochs=2,
                task="copy", max_difficulty=2, reward_type="partial", eval_prompts=8, progress=False,
                tensorboard=False), **kw)
  return c


def tiny_ppo(**kw):
  c = ppo_cartpole.get_config()
  c.update(dict(num_updates=4, chunk_size=2, save_every=2, num_seeds=2, num_envs=2,
                num_steps=8, num_minibatches=2, update_epochs=2, hidden_size=8, eval_envs=2,
                progress=False, tensorboard=False), **kw)
  return c


def leaves_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                    for x, y in zip(la, lb))


# ---- validation ----
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_config_validates_and_matches_its_schema(name):
  c = CONFIGS[name].get_config()
  validate.validate(c)
  assert set(c.keys()) == set(validate.SCHEMAS[c.kind])


@pytest.mark.parametrize("field,value", [
    ("num_updates", 0), ("num_updates", "20"), ("learning_rate", -0.1), ("learning_rate", "0.1"),
    ("gamma", 1.5), ("baseline", "critic"), ("num_seeds", 2.0), ("progress", 1),
    ("save_every", 7), ("branching", 9), ("kind", "bandit")])
def test_bad_field_is_named_before_anything_compiles(tmp_path, field, value):
  # ConfigDict's own type safety refuses most wrong types at assignment; a config built by hand
  # (type_safe=False, or a plain dict) reaches validate with them.
  c = ml_collections.ConfigDict(tiny_tabular().to_dict(), type_safe=False)
  c[field] = value
  workdir = str(tmp_path / "run")
  with count_compilations() as n:
    with pytest.raises(ValueError, match=rf"config\.{field}"):
      train_bin.run(c, workdir)
  assert n[0] == 0
  assert not os.path.exists(workdir)


def test_unknown_and_missing_fields_are_named():
  c = tiny_tabular()
  with c.unlocked():
    c.lr = 0.1
  with pytest.raises(ValueError, match=r"unknown config field `config\.lr`"):
    validate.validate(c)
  c = tiny_tabular()
  with c.unlocked():
    del c["horizon"]
  with pytest.raises(ValueError, match=r"missing config field `config\.horizon`"):
    validate.validate(c)


@pytest.mark.parametrize("module,field,value", [
    (grpo_tokens, "group_size", 1), (gspo_tokens, "estimator", "ppo"),
    (grpo_tokens, "num_heads", 3), (dr_grpo_tokens, "pretrain_low", 0.9),
    (ppo_cartpole, "num_minibatches", 3), (ppo_cartpole, "env_name", "Pong"),
    (ppo_cartpole, "gae_lambda", -0.1)])
def test_bad_fields_of_the_other_kinds(module, field, value):
  c = module.get_config()
  c[field] = value
  with pytest.raises(ValueError, match=rf"config\.{field}"):
    validate.validate(c)


# ---- tabular ----
def _exact_j_by_recursion(mdp, probs):
  """J of a stationary policy on a finite-horizon MDP by numpy backward recursion (independent of
  envs.tabular): V_H = 0, V_h(s) = sum_a pi(a|s) (r(s, a) + gamma sum_s' P(s'|s, a) V_{h+1}(s'))."""
  P, r, rho = (np.asarray(x, np.float64) for x in (mdp.P, mdp.r, mdp.rho))
  g, v = float(mdp.gamma), np.zeros(P.shape[0])
  for _ in range(mdp.horizon):
    v = np.sum(probs * (r + g * P @ v), axis=1)
  return float(rho @ v)


def test_tabular_learns_and_logs_the_exact_j(tmp_path):
  c = tiny_tabular()
  result = loop.train(c, str(tmp_path))
  hist = result.history
  assert [h["step"] for h in hist] == [0, 5, 10, 15, 20]
  mdp = loop_tabular.make_mdp(c)
  uniform = np.full((c.num_states, c.num_actions), 1.0 / c.num_actions)
  np.testing.assert_allclose(hist[0]["exact_J"], _exact_j_by_recursion(mdp, uniform), rtol=1e-5)
  params = np.asarray(result.state.params, np.float64)             # [seeds, S, A]
  probs = np.exp(params - params.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  finals = [_exact_j_by_recursion(mdp, p) for p in probs]
  np.testing.assert_allclose(hist[-1]["exact_J"], np.mean(finals), rtol=1e-5)
  assert hist[-1]["exact_J"] > hist[0]["exact_J"] + 0.05            # REINFORCE improves J
  assert finals[0] != finals[1]                                      # seeds differ
  for name in ("report.md", "curve.png", "metrics.jsonl"):
    assert os.path.getsize(tmp_path / name) > 0
  assert os.listdir(tmp_path / "tb")
  assert "exact_J" in (tmp_path / "report.md").read_text()


def test_tabular_resume_equals_uninterrupted_run(tmp_path):
  full = loop.train(tiny_tabular(), str(tmp_path / "full"))
  loop.train(tiny_tabular(num_updates=10), str(tmp_path / "split"))
  resumed = loop.train(tiny_tabular(), str(tmp_path / "split"))   # continues at update 10
  assert leaves_equal(full.state, resumed.state)
  assert [h["step"] for h in resumed.history] == [0, 5, 10, 15, 20]
  assert resumed.history == full.history
  again = loop.train(tiny_tabular(), str(tmp_path / "split"))     # finished: nothing to do
  assert leaves_equal(full.state, again.state)


# ---- tokens ----
@pytest.mark.parametrize("module,kl_beta", [(grpo_tokens, 0.05), (gspo_tokens, 0.0),
                                            (dr_grpo_tokens, 0.0)])
def test_token_loops_update_the_policy_and_resume_exactly(tmp_path, module, kl_beta):
  full = loop.train(tiny_tokens(module, kl_beta=kl_beta), str(tmp_path / "full"))
  last = full.history[-1]
  assert [h["step"] for h in full.history] == [0, 2, 4]
  assert 0.0 <= last["reward"] <= 1.0 and 0.0 <= last["eval_success"] <= 1.0
  assert last["grad_norm"] > 0                      # partial credit: non-zero advantages
  assert int(full.state.step) == 4 * 2              # one optimizer step per epoch
  assert ("ref_params" in full.state.extra) == (kl_beta > 0)
  loop.train(tiny_tokens(module, kl_beta=kl_beta, num_updates=2), str(tmp_path / "split"))
  resumed = loop.train(tiny_tokens(module, kl_beta=kl_beta), str(tmp_path / "split"))
  assert leaves_equal(full.state, resumed.state)
  assert resumed.history == full.history


# ---- env (PPO) ----
def test_ppo_runs_vmapped_over_seeds_and_resumes(tmp_path):
  full = loop.train(tiny_ppo(anneal_lr=False), str(tmp_path / "full"))
  kernel = jax.tree.leaves(full.state.params)[0]
  assert kernel.shape[0] == 2                                   # [num_seeds, ...]
  assert not np.array_equal(kernel[0], kernel[1])
  last = full.history[-1]
  assert last["step"] == 4 and last["eval_return"] >= 1.0 and np.isfinite(last["value_loss"])
  loop.train(tiny_ppo(anneal_lr=False, num_updates=2), str(tmp_path / "split"))
  resumed = loop.train(tiny_ppo(anneal_lr=False), str(tmp_path / "split"))
  assert leaves_equal(full.state, resumed.state)


def test_annealed_run_cannot_be_lengthened(tmp_path):
  # The annealed learning rate depends on num_updates: a longer run is a different run.
  c = tiny_ppo(num_updates=2)
  assert loop.fingerprint(c)["num_updates"] == 2
  assert "num_updates" not in loop.fingerprint(tiny_ppo(anneal_lr=False))
  loop.train(c, str(tmp_path))
  with pytest.raises(ValueError, match="num_updates"):
    loop.train(tiny_ppo(num_updates=4), str(tmp_path))
