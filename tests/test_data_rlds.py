"""RLDS episode datasets: round trip in a new process, boundaries, mixtures, padded view, errors."""

import json
import math
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _chain_env import Chain, expert  # noqa: E402

from pgx_lab.data import generate, rlds  # noqa: E402
from pgx_lab.envs import spaces  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_STATES, TIME_LIMIT, MAX_STEPS = 5, 8, 12
FRACTIONS = {"random": 0.5, "expert": 0.3, "noisy": 0.2}
EPS = 0.2


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
  """24 mixed episodes of the chain, written once: (episodes, metadata, path)."""
  env = Chain(N_STATES)
  episodes, meta = generate.generate_episodes(
      env, env.default_params(), jax.random.PRNGKey(0), num_episodes=24, max_steps=MAX_STEPS,
      behaviour="mixed", expert_fn=expert, fractions=FRACTIONS, epsilon=EPS)
  path = rlds.write_episodes(tmp_path_factory.mktemp("ds") / "chain", episodes, name="chain",
                             metadata=meta)
  return episodes, meta, path


def _by_hand():
  """Three episodes of 3, 1 and 4 transitions: terminated, truncated, terminated."""
  rng = np.random.default_rng(0)
  eps = []
  for t, term in ((3, True), (1, False), (4, True)):
    eps.append(generate.episode_from_transitions(
        rng.normal(size=(t, 2)), rng.integers(0, 3, t), rng.normal(size=t), term,
        rng.normal(size=2), logp=None, behaviour=t))
  return eps


def test_round_trip_in_new_process(mixed, tmp_path):
  episodes, meta, path = mixed
  out = tmp_path / "read.npz"
  script = ("import sys, json, numpy as np\n"
            "from pgx_lab.data import rlds\n"
            "d = rlds.read_episodes(sys.argv[1])\n"
            "np.savez(sys.argv[2], obs=d.obs, actions=d.actions, rewards=d.rewards,\n"
            "         discounts=d.discounts, is_first=d.is_first, is_last=d.is_last,\n"
            "         is_terminal=d.is_terminal, logp=d.logp, episode_id=d.episode_id,\n"
            "         behaviour=d.episode_metadata['behaviour'], meta=json.dumps(d.metadata))\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  subprocess.run([sys.executable, "-c", script, str(path), str(out)], check=True, cwd=REPO,
                 env=env, capture_output=True)
  got = np.load(out)
  cat = lambda k: np.concatenate([e["steps"][k] for e in episodes])
  pairs = {"obs": "observation", "actions": "action", "rewards": "reward",
           "discounts": "discount", "is_first": "is_first", "is_last": "is_last",
           "is_terminal": "is_terminal", "logp": "behaviour_logp"}
  for mine, theirs in pairs.items():
    want = cat(theirs)
    stored = (np.float32 if np.issubdtype(want.dtype, np.floating) else
              np.int32 if np.issubdtype(want.dtype, np.integer) else np.bool_)
    assert got[mine].dtype == stored, mine
    np.testing.assert_array_equal(got[mine], want.astype(stored), err_msg=mine)
  lengths = [len(e["steps"]["reward"]) for e in episodes]
  np.testing.assert_array_equal(got["episode_id"], np.repeat(np.arange(len(episodes)), lengths))
  np.testing.assert_array_equal(got["behaviour"], [e["behaviour"] for e in episodes])
  assert json.loads(str(got["meta"])) == meta


def test_episode_boundaries_follow_the_chain(mixed):
  """Replays the chain's dynamics in NumPy: terminal iff the goal was reached, else truncated by
  the env's time limit; the RLDS flags and discounts say the same."""
  episodes, _, _ = mixed
  for e in episodes:
    s = e["steps"]
    pos = np.argmax(s["observation"], 1)
    t = len(pos) - 1
    np.testing.assert_array_equal(pos[1:], np.clip(pos[:-1] + 2 * s["action"][:-1] - 1, 0,
                                                   N_STATES - 1))
    reached = pos[-1] == N_STATES - 1
    assert bool(s["is_terminal"][-1]) == reached
    assert reached or t == TIME_LIMIT                       # truncated by the time limit
    assert s["is_first"].tolist() == [True] + [False] * t
    assert s["is_last"].tolist() == [False] * t + [True]
    np.testing.assert_array_equal(s["reward"][:t], (pos[1:] == N_STATES - 1).astype(float))
    np.testing.assert_array_equal(s["discount"][:t], 1.0 - (pos[1:] == N_STATES - 1))


def test_max_steps_truncates():
  env = Chain(N_STATES)
  eps, meta = generate.generate_episodes(env, env.default_params(), jax.random.PRNGKey(1),
                                         num_episodes=3, max_steps=3, behaviour="expert",
                                         expert_fn=expert)
  for e in eps:   # the goal needs 4 steps: all cut at 3, not terminal
    assert len(e["steps"]["reward"]) == 4 and not e["steps"]["is_terminal"].any()
  assert meta["counts"] == {"random": 0, "expert": 3, "noisy": 0}


def test_mixture_fractions_and_logp(mixed):
  episodes, meta, path = mixed
  d = rlds.read_episodes(path)
  counts = [12, 7, 5]        # 24 * (0.5, 0.3, 0.2) = 12, 7.2, 4.8 -> largest remainder 12, 7, 5
  np.testing.assert_array_equal(d.episode_metadata["behaviour"], np.repeat([0, 1, 2], counts))
  assert meta["fractions"] == FRACTIONS and meta["counts"] == dict(zip(generate.BEHAVIOURS,
                                                                       counts))
  b = d.episode_metadata["behaviour"][d.episode_id]
  step = ~d.is_last
  a = d.actions
  np.testing.assert_allclose(d.logp[step & (b == 0)], math.log(0.5), rtol=1e-6)
  assert np.all(a[step & (b == 1)] == 1) and np.all(np.isnan(d.logp[step & (b == 1)]))
  noisy = step & (b == 2)
  want = np.where(a[noisy] == 1, math.log(1 - EPS + EPS / 2), math.log(EPS / 2))
  np.testing.assert_allclose(d.logp[noisy], want, rtol=1e-6)
  with pytest.raises(ValueError, match="fractions"):
    generate.generate_episodes(Chain(), Chain().default_params(), jax.random.PRNGKey(0),
                               num_episodes=2, max_steps=2, behaviour="mixed",
                               expert_fn=expert, fractions={"random": 0.5})
  with pytest.raises(ValueError, match="expert_fn"):
    generate.generate_episodes(Chain(), Chain().default_params(), jax.random.PRNGKey(0),
                               num_episodes=2, max_steps=2, behaviour="noisy")
  with pytest.raises(ValueError, match="behaviour"):
    generate.generate_episodes(Chain(), Chain().default_params(), jax.random.PRNGKey(0),
                               num_episodes=2, max_steps=2, behaviour="medium")


def test_noisy_policies_sample_their_logp():
  """Epsilon-greedy over Discrete(4) and censored Gaussian on a Box, against closed forms."""
  keys = jax.random.split(jax.random.PRNGKey(3), 20_000)
  pol = generate.noisy_policy(lambda k, o: jnp.int32(2), spaces.Discrete(4), epsilon=0.3)
  a, lp = jax.jit(jax.vmap(pol, (0, None)))(keys, None)
  a, lp = np.asarray(a), np.asarray(lp)
  p_other = 0.3 * 3 / 4
  assert abs((a != 2).mean() - p_other) < 5 * math.sqrt(p_other * (1 - p_other) / len(a))
  np.testing.assert_allclose(lp, np.log(np.where(a == 2, 0.7 + 0.3 / 4, 0.3 / 4)), rtol=1e-6)
  mu, sigma = 0.8, 0.5
  space = spaces.Box(-1.0, 1.0, (1,))
  pol = generate.noisy_policy(lambda k, o: jnp.full((1,), mu), space, sigma=sigma)
  a, lp = jax.jit(jax.vmap(pol, (0, None)))(keys, None)
  a, lp = np.asarray(a)[:, 0], np.asarray(lp)
  tail = 0.5 * math.erfc((1.0 - mu) / sigma / math.sqrt(2))       # P(mu + sigma z >= 1)
  at_top = a >= 1.0
  assert abs(at_top.mean() - tail) < 5 * math.sqrt(tail * (1 - tail) / len(a))
  np.testing.assert_allclose(lp[at_top], math.log(tail), rtol=1e-5)
  inside = (a > -1) & (a < 1)
  z = (a[inside] - mu) / sigma
  np.testing.assert_allclose(lp[inside], -0.5 * z ** 2 - math.log(sigma * math.sqrt(2 * math.pi)),
                             rtol=1e-5, atol=1e-5)
  _, lp = generate.random_policy(spaces.Box(-np.inf, 3.0, (3,)))(keys[0], None)
  np.testing.assert_allclose(lp, -3 * math.log(2.0), rtol=1e-6)   # unbounded axes on [-1, 1]


def test_padded_view_and_masks(tmp_path):
  eps = _by_hand()
  d = rlds.read_episodes(rlds.write_episodes(tmp_path / "h", eps, name="hand"))
  tr = d.to_trajectory(max_len=6)
  lengths = np.array([3, 1, 4])
  np.testing.assert_array_equal(tr.mask, (np.arange(6) < lengths[:, None]).astype(np.float32))
  np.testing.assert_array_equal(tr.terminated, np.eye(6, dtype=bool)[lengths - 1] * [[1], [0], [1]])
  np.testing.assert_array_equal(tr.truncated, np.eye(6, dtype=bool)[lengths - 1] * [[0], [1], [0]])
  for i, (e, n) in enumerate(zip(eps, lengths)):
    np.testing.assert_array_equal(tr.obs[i, :n], e["steps"]["observation"][:n].astype(np.float32))
    np.testing.assert_array_equal(tr.actions[i, :n], e["steps"]["action"][:n])
    np.testing.assert_array_equal(tr.rewards[i, :n], e["steps"]["reward"][:n].astype(np.float32))
    np.testing.assert_array_equal(d.final_observations()[i],
                                  e["steps"]["observation"][-1].astype(np.float32))
    assert not tr.obs[i, n:].any() and not tr.actions[i, n:].any()
  assert d.logp is None and np.array_equal(np.isnan(tr.logp), tr.mask > 0)
  sb = tr.to_sequence_batch(gamma=0.9)
  np.testing.assert_allclose(sb.discounts, 0.9 * (1 - tr.terminated))
  np.testing.assert_array_equal(d.to_trajectory().mask.shape, (3, 4))
  with pytest.raises(ValueError, match="max_len"):
    d.to_trajectory(max_len=3)


def test_dict_observations(tmp_path):
  rng = np.random.default_rng(1)
  eps = [generate.episode_from_transitions(
      {"pos": rng.normal(size=(t, 2)), "cell": rng.integers(0, 9, t)}, rng.normal(size=(t, 3)),
      rng.normal(size=t), False, {"pos": rng.normal(size=2), "cell": np.int64(4)},
      logp=rng.normal(size=t)) for t in (2, 5)]
  d = rlds.read_episodes(rlds.write_episodes(tmp_path / "d", eps, name="dict_obs"))
  for k, dtype in (("pos", np.float32), ("cell", np.int32)):
    want = np.concatenate([e["steps"]["observation"][k] for e in eps]).astype(dtype)
    assert d.obs[k].dtype == dtype
    np.testing.assert_array_equal(d.obs[k], want)
  tr = d.to_trajectory()
  assert tr.obs["pos"].shape == (2, 5, 2) and tr.obs["cell"].shape == (2, 5)
  assert tr.actions.shape == (2, 5, 3) and tr.truncated[[0, 1], [1, 4]].all()
  assert tr.truncated.sum() == 2 and not tr.terminated.any()
  np.testing.assert_array_equal(d.final_observations()["cell"], [4, 4])


def test_half_written_and_missing_raise_with_path(mixed, tmp_path):
  episodes, _, _ = mixed
  missing = tmp_path / "nope"
  with pytest.raises(FileNotFoundError, match=str(missing)):
    rlds.read_episodes(missing)
  (tmp_path / ".nope.incomplete-abc").mkdir()         # what a killed writer leaves behind
  with pytest.raises(FileNotFoundError, match="unfinished write"):
    rlds.read_episodes(missing)
  cases = {"marker": lambda p: os.remove(p / rlds.MARKER),
           "shard": lambda p: os.remove(next(p.glob("*.array_record-*"))),
           "truncated": lambda p: _truncate(next(p.glob("*.array_record-*"))),
           "info": lambda p: os.remove(p / "dataset_info.json"),
           "count": lambda p: _edit_marker(p, num_steps=1),
           "episodes": lambda p: _edit_marker(p, num_examples=4)}
  for case, damage in cases.items():
    path = tmp_path / case
    rlds.write_episodes(path, episodes[:3], name="chain")
    damage(path)
    with pytest.raises(rlds.IncompleteDatasetError, match=str(path)):
      rlds.read_episodes(path)


def _truncate(f):
  with open(f, "r+b") as fh:
    fh.truncate(os.path.getsize(f) // 2)


def _edit_marker(path, **changes):
  m = json.loads((path / rlds.MARKER).read_text())
  (path / rlds.MARKER).write_text(json.dumps(dict(m, **changes)))


def test_bad_input(tmp_path, mixed):
  episodes, _, _ = mixed
  with pytest.raises(ValueError, match="episodes"):
    rlds.write_episodes(tmp_path / "a", [], name="x")
  steps = episodes[0]["steps"]
  bad = {"steps": dict(steps, is_first=np.zeros(len(steps["reward"])))}
  with pytest.raises(ValueError, match="is_first"):
    rlds.write_episodes(tmp_path / "a", [bad], name="x")
  short = {"steps": dict(episodes[0]["steps"], reward=np.zeros(1))}
  with pytest.raises(ValueError, match="leading dim"):
    rlds.write_episodes(tmp_path / "a", [short], name="x")
  other = _by_hand()[0]
  with pytest.raises(ValueError, match=r"episodes\[1\]"):
    rlds.write_episodes(tmp_path / "a", [episodes[0], other], name="x")
  with pytest.raises(ValueError, match="name"):
    rlds.write_episodes(tmp_path / "a", episodes[:1], name="Bad-Name")
  with pytest.raises(ValueError, match="metadata"):
    rlds.write_episodes(tmp_path / "a", episodes[:1], name="x", metadata={"f": object()})
  assert not (tmp_path / "a").exists()
  p = rlds.write_episodes(tmp_path / "a", episodes[:1], name="x")
  with pytest.raises(FileExistsError, match="overwrite"):
    rlds.write_episodes(p, episodes[:2], name="x")
  rlds.write_episodes(p, episodes[:2], name="x", overwrite=True)
  assert rlds.read_episodes(p).num_episodes == 2
  assert sorted(os.listdir(tmp_path)) == ["a"]                   # no temp dirs left behind


def test_read_speed(tmp_path):
  """Writes 100k steps (400 episodes of 250) and reports the read speed; asserts values only."""
  rng = np.random.default_rng(0)
  eps = [generate.episode_from_transitions(rng.normal(size=(249, 4)), rng.integers(0, 3, 249),
                                           rng.normal(size=249), bool(i % 2), rng.normal(size=4),
                                           logp=rng.normal(size=249)) for i in range(400)]
  t0 = time.perf_counter()
  path = rlds.write_episodes(tmp_path / "big", eps, name="big")
  t1 = time.perf_counter()
  d = rlds.read_episodes(path)
  t2 = time.perf_counter()
  n = d.rewards.shape[0]
  print(f"\nRLDS: wrote {n} steps in {t1 - t0:.2f}s, read in {t2 - t1:.3f}s "
        f"({n / (t2 - t1):,.0f} steps/s)")
  assert n == 100_000
  np.testing.assert_array_equal(d.obs[-250:], eps[-1]["steps"]["observation"].astype(np.float32))
