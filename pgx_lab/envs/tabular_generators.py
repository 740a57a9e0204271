"""Generators of `TabularMDP`s from the literature, and a registry `make(name, **kwargs)`.

  garnet            random MDPs (Archibald, McKinnon & Thomas 1995);
  river_swim        a chain with a small reward on the left and a large one on the right
                    (Strehl & Littman 2008; the numbers of Osband, Russo & Van Roy 2013);
  gridworld         a grid world from an ASCII map with walls, slip and a goal reward;
  four_rooms        the four-rooms map of Sutton, Precup & Singh 1999;
  combination_lock  H steps, one correct action each, any wrong action is fatal (the exploration
                    benchmark of e.g. Misra et al. 2020 and Agarwal et al. 2020, PC-PG).

Each validates its (static, Python) arguments and raises ValueError naming the bad one.
"""

import functools
import inspect
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from pgx_lab.envs.tabular import TabularMDP

Array = jax.Array


def _float():
  return jnp.zeros(()).dtype   # float64 under jax.enable_x64, float32 otherwise


def _check_int(name: str, value, low: int, high: Optional[int] = None) -> None:
  ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low
  if ok and high is not None:
    ok = value <= high
  if not ok:
    rng = f">= {low}" if high is None else f"in [{low}, {high}]"
    raise ValueError(f"`{name}` must be an int {rng}, got {value!r}.")


def _check_prob(name: str, value) -> None:
  if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
    raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}.")


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _garnet_arrays(key: Array, s: int, a: int, b: int):
  """P [S, A, S] and r [S, A] of a Garnet (see `garnet`), one compiled program."""
  k_succ, k_cut, k_r = jax.random.split(key, 3)
  dt = _float()
  succ = jnp.argsort(jax.random.uniform(k_succ, (s, a, s)), axis=-1)[..., :b]   # distinct
  cuts = jnp.sort(jax.random.uniform(k_cut, (s, a, b - 1), dt), axis=-1)
  edges = jnp.concatenate([jnp.zeros((s, a, 1), dt), cuts, jnp.ones((s, a, 1), dt)], -1)
  weights = jnp.diff(edges, axis=-1)                                      # [S, A, b]
  P = jnp.einsum("sab,sabt->sat", weights, jax.nn.one_hot(succ, s, dtype=dt))
  return P, jax.random.uniform(k_r, (s, a), dt)


def garnet(key: Array, num_states: int, num_actions: int, branching: int, *, gamma: float = 0.9,
           horizon: Optional[int] = None, reward_noise: float = 0.0,
           obs: str = "one_hot") -> TabularMDP:
  """A Garnet(S, A, b) random MDP (Archibald, McKinnon & Thomas 1995).

  Each (s, a) has `branching` distinct successor states drawn uniformly without replacement; their
  probabilities split [0, 1] at b - 1 uniform cut points (a flat Dirichlet). Rewards r(s, a) ~
  U[0, 1); the start distribution is uniform. Traceable in `key` (vmap over keys for a batch).

  Args:
    key: PRNG key.
    num_states: S >= 1.
    num_actions: A >= 1.
    branching: b in [1, S].
    gamma, horizon, reward_noise, obs: as in `TabularMDP.create`.
  """
  _check_int("num_states", num_states, 1)
  _check_int("num_actions", num_actions, 1)
  _check_int("branching", branching, 1, num_states)
  P, r = _garnet_arrays(key, num_states, num_actions, branching)
  s = num_states
  return TabularMDP.create(P, r, jnp.full((s,), 1.0 / s, r.dtype), gamma, horizon=horizon,
                           reward_noise=reward_noise, obs=obs)


def river_swim(num_states: int = 6, *, small_reward: float = 0.005, large_reward: float = 1.0,
               gamma: float = 0.95, horizon: Optional[int] = None,
               obs: str = "one_hot") -> TabularMDP:
  """RiverSwim (Strehl & Littman 2008), with the numbers of Osband, Russo & Van Roy 2013.

  States 0..N-1 on a river flowing left; the agent starts in state 0. Action 0 (left, with the
  current) moves one state left deterministically (stays at 0), and in state 0 earns
  `small_reward` (5/1000). Action 1 (right, against the current): in an interior state it moves
  right w.p. 0.35, stays w.p. 0.6, drifts left w.p. 0.05; in state 0 it moves right w.p. 0.6 and
  stays w.p. 0.4; in state N-1 it stays w.p. 0.6, drifts left w.p. 0.4, and earns `large_reward`
  (1). (The original paper used 0.3 / 0.6 / 0.1 and rewards 5 and 10000.)
  """
  _check_int("num_states", num_states, 2)
  if not 0.0 <= small_reward < large_reward:
    raise ValueError(f"`small_reward` must be in [0, large_reward), got {small_reward!r} "
                     f"(large_reward {large_reward!r}).")
  n = num_states
  P = np.zeros((n, 2, n))
  for s in range(n):
    P[s, 0, max(s - 1, 0)] = 1.0
  P[0, 1, 0], P[0, 1, 1] = 0.4, 0.6
  for s in range(1, n - 1):
    P[s, 1, s - 1], P[s, 1, s], P[s, 1, s + 1] = 0.05, 0.6, 0.35
  P[n - 1, 1, n - 2], P[n - 1, 1, n - 1] = 0.4, 0.6
  r = np.zeros((n, 2))
  r[0, 0], r[n - 1, 1] = small_reward, large_reward
  dt = _float()
  rho = jnp.zeros((n,), dt).at[0].set(1.0)
  return TabularMDP.create(jnp.asarray(P, dt), jnp.asarray(r, dt), rho, gamma, horizon=horizon,
                           obs=obs)


# Actions of the grid worlds: up, right, down, left as (row, col) offsets.
MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))

# Sutton, Precup & Singh 1999, Fig. 2: 104 free cells in four rooms joined by four hallways.
# '#' wall, '.' free, 'S' start, 'G' goal. The start and goal placement is ours.
FOUR_ROOMS = """
#############
#S....#.....#
#.....#.....#
#...........#
#.....#.....#
#.....#.....#
##.####.....#
#.....###.###
#.....#.....#
#.....#.....#
#...........#
#.....#....G#
#############
"""


def _parse(ascii_map: Union[str, Sequence[str]]):
  if isinstance(ascii_map, str):
    rows = [row for row in ascii_map.split("\n") if row.strip()]
  else:
    rows = list(ascii_map)
  if not rows or any(not isinstance(row, str) for row in rows):
    raise ValueError("`ascii_map` must be a non-empty string or a list of strings.")
  if len({len(row) for row in rows}) != 1:
    raise ValueError("`ascii_map` rows must all have the same length.")
  bad = set("".join(rows)) - set("#. SG")
  if bad:
    raise ValueError(f"`ascii_map` has unknown characters {sorted(bad)}; use '#', '.', 'S', 'G'.")
  grid = np.array([list(row) for row in rows])
  if not np.any(grid == "G"):
    raise ValueError("`ascii_map` needs at least one goal 'G'.")
  return grid


def grid_cells(ascii_map: Union[str, Sequence[str]]) -> np.ndarray:
  """[S, 2] (row, col) of each state of `gridworld(ascii_map)`: the non-wall cells, row-major."""
  return np.argwhere(_parse(ascii_map) != "#")


def gridworld(ascii_map: Union[str, Sequence[str]], *, slip: float = 0.0,
              goal_reward: float = 1.0, step_reward: float = 0.0, gamma: float = 0.95,
              horizon: Optional[int] = None, obs: str = "one_hot") -> TabularMDP:
  """A grid world from an ASCII map: '#' wall, '.' or ' ' free, 'S' start, 'G' goal.

  States are the non-wall cells in row-major order (`grid_cells`). Actions: 0 up, 1 right,
  2 down, 3 left. With prob. 1 - slip the intended move happens, with prob. slip / 3 each of the
  other three (Sutton, Precup & Singh 1999 use slip = 1/3); a move into a wall or off the map
  stays put. Entering a goal earns `goal_reward` in expectation: r(s, a) = step_reward +
  goal_reward * P(goal | s, a), and `step` pays this expected reward whatever s' is (the MDP
  keeps r [S, A] only; values and gradients are those of the s'-dependent reward). Goals are
  terminal and absorbing. Start: uniform over 'S' cells, or over the
  free non-goal cells if there is none.
  """
  grid = _parse(ascii_map)
  _check_prob("slip", slip)
  for name, v in (("goal_reward", goal_reward), ("step_reward", step_reward)):
    if not isinstance(v, (int, float)) or not np.isfinite(v):
      raise ValueError(f"`{name}` must be a finite number, got {v!r}.")
  cells = np.argwhere(grid != "#")
  index = {tuple(c): i for i, c in enumerate(cells)}
  n = len(cells)
  goal = np.array([grid[tuple(c)] == "G" for c in cells])
  start = np.array([grid[tuple(c)] == "S" for c in cells], float)
  if not start.any():
    start = (~goal).astype(float)
  if not start.any():
    raise ValueError("`ascii_map` has no free non-goal cell to start from.")
  P = np.zeros((n, 4, n))
  for i, (row, col) in enumerate(cells):
    if goal[i]:
      P[i, :, i] = 1.0
      continue
    for a in range(4):
      for m, (dr, dc) in enumerate(MOVES):
        p = 1.0 - slip if m == a else slip / 3.0
        P[i, a, index.get((row + dr, col + dc), i)] += p
  r = (~goal)[:, None] * (step_reward + goal_reward * P[:, :, goal].sum(-1))
  dt = _float()
  return TabularMDP.create(jnp.asarray(P, dt), jnp.asarray(r, dt),
                           jnp.asarray(start / start.sum(), dt), gamma, horizon=horizon,
                           terminal=jnp.asarray(goal), obs=obs)


def four_rooms(*, slip: float = 1.0 / 3.0, goal_reward: float = 1.0, gamma: float = 0.9,
               horizon: Optional[int] = None, obs: str = "one_hot") -> TabularMDP:
  """The four-rooms grid world (Sutton, Precup & Singh 1999): `FOUR_ROOMS`, slip 1/3, gamma 0.9."""
  return gridworld(FOUR_ROOMS, slip=slip, goal_reward=goal_reward, gamma=gamma, horizon=horizon,
                   obs=obs)


def combination_lock(horizon: int, num_actions: int, *, combination: Optional[Sequence[int]] = None,
                     key: Optional[Array] = None, gamma: float = 1.0,
                     obs: str = "one_hot") -> TabularMDP:
  """A combination lock with `horizon` H steps and `num_actions` A actions.

  States 0..H-1 are the lock's positions (start at 0), H is 'open' and H + 1 is 'dead', both
  terminal and absorbing. In position h the action combination[h] moves to h + 1 (to 'open' from
  H - 1, earning reward 1, the only reward); any other action moves to 'dead'. So J* = gamma^(H-1)
  and a uniform policy gets (1/A)^H gamma^(H-1).

  Args:
    horizon: H >= 1, also the MDP's finite horizon.
    num_actions: A >= 2.
    combination: the H correct actions; if None they are drawn uniformly with `key`
      (default PRNGKey(0)).
    gamma: discount in [0, 1].
  """
  _check_int("horizon", horizon, 1)
  _check_int("num_actions", num_actions, 2)
  if combination is None:
    key = jax.random.PRNGKey(0) if key is None else key
    combination = np.asarray(jax.random.randint(key, (horizon,), 0, num_actions))
  combination = np.asarray(combination)
  if (combination.shape != (horizon,) or not np.issubdtype(combination.dtype, np.integer)
      or np.any(combination < 0) or np.any(combination >= num_actions)):
    raise ValueError(f"`combination` must be {horizon} ints in [0, {num_actions}), "
                     f"got {combination.tolist()}.")
  h, a = horizon, num_actions
  opened, dead = h, h + 1
  P = np.zeros((h + 2, a, h + 2))
  P[:h, :, dead] = 1.0
  P[np.arange(h), combination, dead] = 0.0
  P[np.arange(h), combination, np.arange(1, h + 1)] = 1.0
  P[opened, :, opened] = P[dead, :, dead] = 1.0
  r = np.zeros((h + 2, a))
  r[h - 1, combination[h - 1]] = 1.0
  terminal = np.zeros(h + 2, bool)
  terminal[[opened, dead]] = True
  dt = _float()
  rho = jnp.zeros((h + 2,), dt).at[0].set(1.0)
  return TabularMDP.create(jnp.asarray(P, dt), jnp.asarray(r, dt), rho, gamma, horizon=h,
                           terminal=jnp.asarray(terminal), obs=obs)


GENERATORS = {
    "garnet": garnet,
    "river_swim": river_swim,
    "gridworld": gridworld,
    "four_rooms": four_rooms,
    "combination_lock": combination_lock,
}


def make(name: str, **kwargs) -> TabularMDP:
  """The MDP `GENERATORS[name](**kwargs)`; ValueError on an unknown name or keyword argument."""
  if name not in GENERATORS:
    raise ValueError(f"unknown tabular MDP `name` {name!r}; known names: {sorted(GENERATORS)}.")
  fn = GENERATORS[name]
  try:
    inspect.signature(fn).bind(**kwargs)
  except TypeError as e:
    raise ValueError(f"bad arguments for `{name}`: {e}.") from None
  return fn(**kwargs)
