"""Tabular MDP generators: Garnet, RiverSwim, grid worlds and four rooms, the combination lock,
the registry, and bad input."""

import collections
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab.envs import tabular as tab
from pgx_lab.envs import tabular_generators as gen


def _rows_ok(mdp):
  P = np.asarray(mdp.P, np.float64)
  assert np.all(P >= 0)
  np.testing.assert_allclose(P.sum(-1), 1.0, atol=1e-6)


def test_transition_rows_are_distributions():
  for mdp in (gen.garnet(jax.random.PRNGKey(0), 7, 3, 4), gen.river_swim(), gen.four_rooms(),
              gen.gridworld(["S..", ".#.", "..G"], slip=0.2),
              gen.combination_lock(4, 3)):
    _rows_ok(mdp)


def test_garnet_structure():
  s, a, b, k = 8, 3, 3, 64
  keys = jax.random.split(jax.random.PRNGKey(1), k)
  mdps = jax.jit(jax.vmap(lambda key: gen.garnet(key, s, a, b)))(keys)
  P, r = np.asarray(mdps.P, np.float64), np.asarray(mdps.r)
  assert P.shape == (k, s, a, s)
  np.testing.assert_allclose(P.sum(-1), 1.0, atol=1e-6)
  np.testing.assert_array_equal((P > 0).sum(-1), b)                  # b distinct successors
  assert np.all((r >= 0) & (r < 1))
  np.testing.assert_allclose(mdps.rho, 1.0 / s)
  # b - 1 uniform cut points give flat-Dirichlet weights: E[max weight] = H_b / b (the mean
  # of the largest spacing), 11/18 for b = 3. The std of one max is < 0.2, so 5 standard
  # errors over k * s * a = 1536 rows is < 0.026.
  top = np.sort(P, -1)[..., -1].ravel()
  assert abs(top.mean() - 11.0 / 18.0) < 5 * top.std() / np.sqrt(top.size)
  # Successors are spread over all states.
  counts = (P > 0).sum((0, 1, 2))
  assert counts.min() > 0.5 * counts.mean()


def test_river_swim():
  mdp = gen.river_swim()
  P, r = np.asarray(mdp.P), np.asarray(mdp.r)
  assert P.shape == (6, 2, 6)
  np.testing.assert_allclose(P[2, 1, [1, 2, 3]], [0.05, 0.6, 0.35], atol=1e-7)
  np.testing.assert_allclose(P[0, 1, [0, 1]], [0.4, 0.6], atol=1e-7)
  np.testing.assert_allclose(P[5, 1, [4, 5]], [0.4, 0.6], atol=1e-7)
  np.testing.assert_array_equal(P[:, 0].argmax(-1), [0, 0, 1, 2, 3, 4])   # left is deterministic
  assert r[0, 0] == pytest.approx(0.005) and r[5, 1] == 1.0 and np.count_nonzero(r) == 2
  opt = tab.value_iteration(mdp)
  np.testing.assert_array_equal(np.argmax(opt.probs, -1), 1)      # far-sighted: always swim right
  myopic = tab.value_iteration(gen.river_swim(gamma=0.3))
  assert int(np.argmax(myopic.probs[0])) == 0                     # myopic: take the small reward
  lazy = tab.expected_return(mdp, jnp.tile(jnp.array([1.0, 0.0]), (6, 1)))
  assert float(opt.j) > 2 * float(lazy)


def _bfs(rows, start, goal):
  """Shortest number of moves from start to goal on the map (independent of the generator)."""
  dist, queue = {start: 0}, collections.deque([start])
  while queue:
    i, j = queue.popleft()
    for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
      n = (i + di, j + dj)
      if rows[n[0]][n[1]] != "#" and n not in dist:
        dist[n] = dist[(i, j)] + 1
        queue.append(n)
  return dist[goal]


def test_four_rooms_shape_and_walls():
  rows = [row for row in gen.FOUR_ROOMS.split("\n") if row]
  assert len(rows) == 13 and all(len(row) == 13 for row in rows)
  free = [(i, j) for i in range(13) for j in range(13) if rows[i][j] != "#"]
  assert len(free) == 104                           # Sutton, Precup & Singh 1999
  # The four hallways each join two rooms: two free neighbours, on opposite sides.
  for i, j in [(3, 6), (6, 2), (7, 9), (10, 6)]:
    nbrs = [(i + di, j + dj) for di, dj in gen.MOVES if rows[i + di][j + dj] != "#"]
    assert len(nbrs) == 2 and nbrs[0][0] + nbrs[1][0] == 2 * i and nbrs[0][1] + nbrs[1][1] == 2 * j
  mdp = gen.four_rooms(slip=0.0)
  cells = [tuple(c) for c in gen.grid_cells(gen.FOUR_ROOMS)]
  assert mdp.num_states == 104 and mdp.num_actions == 4 and sorted(cells) == free
  P = np.asarray(mdp.P)
  goal = cells.index((11, 11))
  for k, (i, j) in enumerate(cells):
    for a, (di, dj) in enumerate(gen.MOVES):
      n = (i + di, j + dj)
      want = k if k == goal or rows[n[0]][n[1]] == "#" else cells.index(n)   # walls block
      assert P[k, a, want] == 1.0, (k, a)
  assert bool(mdp.terminal[goal]) and int(np.sum(mdp.terminal)) == 1
  np.testing.assert_array_equal(np.asarray(mdp.rho) > 0, [c == (1, 1) for c in cells])
  # Deterministic moves: the goal reward arrives after the shortest path of d moves.
  d = _bfs(rows, (1, 1), (11, 11))
  assert float(tab.value_iteration(mdp).j) == pytest.approx(0.9 ** (d - 1), rel=1e-4)
  # The paper's slip: the intended move w.p. 2/3, each other direction w.p. 1/9.
  slippery = np.asarray(gen.four_rooms().P)
  corner = cells.index((1, 1))
  np.testing.assert_allclose(slippery[corner, 0, corner], 2 / 3 + 1 / 9, atol=1e-6)  # up, left
  np.testing.assert_allclose(slippery[corner, 0, cells.index((1, 2))], 1 / 9, atol=1e-6)
  np.testing.assert_allclose(slippery[corner, 2, cells.index((2, 1))], 2 / 3, atol=1e-6)


def test_gridworld_goal_reward_and_termination():
  mdp = gen.gridworld("#####\n#S.G#\n#####", goal_reward=2.0, step_reward=-0.1, gamma=0.5,
                      obs="index")
  assert mdp.num_states == 3
  np.testing.assert_allclose(mdp.r[1], [-0.1, 1.9, -0.1, -0.1], atol=1e-6)   # right enters G
  np.testing.assert_allclose(mdp.r[2], 0.0)                                  # absorbing goal
  assert float(tab.value_iteration(mdp).j) == pytest.approx(-0.1 + 0.5 * 1.9, rel=1e-5)
  _, state = mdp.reset(jax.random.PRNGKey(0), mdp)
  out = mdp.step(jax.random.PRNGKey(1), state, jnp.int32(1), mdp)
  out = mdp.step(jax.random.PRNGKey(2), out.state, jnp.int32(1), mdp)
  assert int(out.obs) == 2 and bool(out.terminated) and float(out.reward) == pytest.approx(1.9)


def test_combination_lock():
  h, a, combo = 4, 3, (2, 0, 1, 2)
  lock = gen.combination_lock(h, a, combination=combo)
  assert lock.num_states == h + 2 and lock.horizon == h
  opt = tab.value_iteration(lock)
  assert float(opt.j) == 1.0
  np.testing.assert_array_equal([int(np.argmax(opt.probs[t, t])) for t in range(h)], combo)
  # Every deterministic policy is a sequence (the position is the state): only the right one opens.
  seqs = jnp.array(list(itertools.product(range(a), repeat=h)))
  fill = jnp.zeros((len(seqs), 2), jnp.int32)
  probs = jax.nn.one_hot(jnp.concatenate([seqs, fill], 1), a)          # [81, H + 2, A]
  js = np.asarray(jax.jit(jax.vmap(lambda p: tab.expected_return(lock, p)))(probs))
  np.testing.assert_array_equal(js, [float(tuple(s) == combo) for s in seqs.tolist()])
  with jax.enable_x64(True):
    lock64 = gen.combination_lock(h, a, combination=combo)
    uniform = tab.expected_return(lock64, jnp.full((h + 2, a), 1.0 / a))
    assert uniform.dtype == jnp.float64
    np.testing.assert_allclose(float(uniform), (1.0 / a) ** h, rtol=1e-14)
  drawn = gen.combination_lock(5, 4, key=jax.random.PRNGKey(3), gamma=0.9)
  assert float(tab.value_iteration(drawn).j) == pytest.approx(0.9 ** 4, rel=1e-6)


def test_make_registry():
  a = gen.make("river_swim", num_states=5)
  b = gen.river_swim(num_states=5)
  np.testing.assert_array_equal(a.P, b.P)
  g = gen.make("garnet", key=jax.random.PRNGKey(0), num_states=4, num_actions=2, branching=2)
  assert g.P.shape == (4, 2, 4)
  with pytest.raises(ValueError, match="known names.*combination_lock"):
    gen.make("cliff_walk")
  with pytest.raises(ValueError, match="river_swim"):
    gen.make("river_swim", num_actions=3)


def test_generator_bad_input():
  key = jax.random.PRNGKey(0)
  cases = [
      ("branching", lambda: gen.garnet(key, 4, 2, 5)),
      ("branching", lambda: gen.garnet(key, 4, 2, 0)),
      ("num_states", lambda: gen.garnet(key, 0, 2, 1)),
      ("num_actions", lambda: gen.garnet(key, 4, "2", 1)),
      ("gamma", lambda: gen.garnet(key, 4, 2, 2, gamma=1.0)),
      ("num_states", lambda: gen.river_swim(num_states=1)),
      ("small_reward", lambda: gen.river_swim(small_reward=2.0)),
      ("ascii_map", lambda: gen.gridworld(["S.G", ".."])),
      ("ascii_map", lambda: gen.gridworld("S.X.G")),
      ("ascii_map", lambda: gen.gridworld("S..")),
      ("slip", lambda: gen.gridworld("S.G", slip=1.5)),
      ("goal_reward", lambda: gen.gridworld("S.G", goal_reward=float("nan"))),
      ("horizon", lambda: gen.combination_lock(0, 3)),
      ("num_actions", lambda: gen.combination_lock(3, 1)),
      ("combination", lambda: gen.combination_lock(3, 2, combination=[0, 1])),
      ("combination", lambda: gen.combination_lock(3, 2, combination=[0, 1, 2])),
  ]
  for name, fn in cases:
    with pytest.raises(ValueError, match=f"`{name}`"):
      fn()
