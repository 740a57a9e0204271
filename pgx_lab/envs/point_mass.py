"""A 2-D point-mass navigation task with circular obstacles, one or several goals and an expert.

Dynamics (single integrator, velocity control): the action a in [-1, 1]^2 is a velocity in units
of `max_speed` (out-of-box actions are clipped), so the wanted displacement is
d = dt * max_speed * clip(a, -1, 1). Obstacles are discs (centre, radius) and the arena is the box
[arena_low, arena_high]. Motion is blocked, never tunnels, and slides:
  1. move along d until the first contact with an obstacle or a wall (each inflated by
     `MARGIN` = 1e-3, the exact first hit of the segment, so thin obstacles cannot be crossed);
  2. the rest of d, minus its component into the contact normal, is then moved the same way
     (stopping at the next contact): the point slides along the obstacle or wall;
  3. if rounding ever left the result inside an obstacle or outside the arena, the move is undone
     (the point stays where step 1 ended, or where it was).
So every position ever returned is at distance >= radius from every obstacle centre, inside the
arena.

Goals: `goals` [G, 2]. At reset a goal index is drawn uniformly. With `goal_conditioned=True` the
observation is (position, goal) [4] and only that goal counts; with `goal_conditioned=False` the
observation is the position [2] and reaching any goal counts (the drawn goal is still kept in the
state as the "intended" one, so the expert's data is multi-modal: two goals give bimodal actions).
The episode terminates when the position is within `goal_radius` of a goal that counts; the reward
is -distance to that (nearest counting) goal after the move ("dense") or 1 on reaching, 0
otherwise ("sparse"). It is truncated after `horizon` steps; a step that reaches a goal on the last
step is terminated, not truncated (the two are exclusive). Starts are uniform in
[start_low, start_high] among points clear of obstacles and goals (128 candidates, first valid).

`expert_action` is a scripted, stateless controller: head straight for the state's goal; when the
segment to the goal passes within `clearance` of an obstacle, take the nearest such obstacle's
cluster (obstacles whose clearance-inflated discs overlap, so there is no passage between them)
and head for the cluster's extreme tangent on the side whose path is shorter (each side's length
is bounded below by the longest member's tangent-arc-tangent path on that side; comparing path
lengths rather than turning angles stops it dithering between sides). Walls are left to the
sliding physics. Measured success within the horizon (128 starts per layout): 100% on the default
layout and on a three-disc wall where the straight-line controller with sliding gets 0%; over 59
random layouts of 3-6 discs (radii 0.08-0.3, two goals) 99.97% (worst layout 98.4%), against
93% for straight-line-with-sliding; steps taken are 1.0-1.2x the straight-line lower bound
ceil((|start - goal| - goal_radius) / (dt max_speed)). It can fail when a cluster touches a wall on
the side it chooses, or in pockets formed by several separate clusters. (Tangent following is
the idea of the Bug family of planners, e.g. TangentBug, Kamon, Rivlin & Rimon 1998.)
"""

import numbers
from typing import Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from pgx_lab import validation
from pgx_lab.envs import api
from pgx_lab.envs import spaces

Array = jax.Array
MARGIN = 1e-3
REWARDS = ("dense", "sparse")
NUM_START_CANDIDATES = 128


@flax.struct.dataclass
class PointMassParams:
  """obstacle_centers [K, 2], obstacle_radii [K]; goals [G, 2]; goal_radius, dt, max_speed
  scalars; start_low/high and arena_low/high [2]; static horizon, reward_type, goal_conditioned.
  Build with `make_params`."""

  obstacle_centers: Array
  obstacle_radii: Array
  goals: Array
  goal_radius: Array
  start_low: Array
  start_high: Array
  arena_low: Array
  arena_high: Array
  dt: Array
  max_speed: Array
  horizon: int = flax.struct.field(pytree_node=False, default=50)
  reward_type: str = flax.struct.field(pytree_node=False, default="dense")
  goal_conditioned: bool = flax.struct.field(pytree_node=False, default=True)


@flax.struct.dataclass
class PointMassState:
  """pos [2]; goal [2] (the drawn goal); goal_index int32; t int32 steps taken."""

  pos: Array
  goal: Array
  goal_index: Array
  t: Array


def _arr(name, v, shape):
  """`v` as a float64 numpy array of `shape`; ValueError naming `name` otherwise."""
  v = np.asarray(v, np.float64)
  if v.shape != tuple(shape) or not np.all(np.isfinite(v)):
    raise ValueError(f"`{name}` must be a finite array of shape {tuple(shape)}, got {v.shape}.")
  return v


def _as_float(v) -> float:
  """float(v) for a real scalar, NaN otherwise (so that range checks on it fail)."""
  try:
    return float(v) if np.ndim(v) == 0 else float("nan")
  except (TypeError, ValueError):
    return float("nan")


def make_params(obstacle_centers=((0.0, 0.0),), obstacle_radii=(0.3,),
                goals=((0.8, 0.5), (0.8, -0.5)), goal_radius=0.1, start_low=(-0.9, -0.5),
                start_high=(-0.7, 0.5), arena_low=(-1.0, -1.0), arena_high=(1.0, 1.0), dt=0.1,
                max_speed=1.0, horizon=50, reward_type="dense",
                goal_conditioned=True) -> PointMassParams:
  """Validated `PointMassParams` (defaults: one disc in the middle between a start strip on the
  left and two goals on the right). Raises ValueError naming the argument: bad shapes, radii or
  scalars <= 0, goals outside the arena or inside (or within MARGIN of) an obstacle, a start box
  outside the arena or with less than 25% of it free (then 128 start candidates all fail with
  probability < 1e-15), an unknown reward_type, or a non-positive horizon."""
  orad = np.asarray(obstacle_radii, np.float64)
  orad = _arr("obstacle_radii", orad, (orad.size,))
  oc = np.asarray(obstacle_centers, np.float64)
  oc = _arr("obstacle_centers", oc.reshape(0, 2) if oc.size == 0 else oc, (orad.size, 2))
  goals = np.asarray(goals, np.float64)
  if goals.ndim != 2 or goals.shape[0] < 1:
    raise ValueError(f"`goals` must have shape [G >= 1, 2], got {goals.shape}.")
  goals = _arr("goals", goals, (goals.shape[0], 2))
  lo, hi = _arr("arena_low", arena_low, (2,)), _arr("arena_high", arena_high, (2,))
  slo, shi = _arr("start_low", start_low, (2,)), _arr("start_high", start_high, (2,))
  for name, v in (("goal_radius", goal_radius), ("dt", dt), ("max_speed", max_speed)):
    if not _as_float(v) > 0:
      raise ValueError(f"`{name}` must be a positive number, got {v!r}.")
  if np.any(orad <= 0):
    raise ValueError(f"`obstacle_radii` must be > 0, got {orad.tolist()}.")
  if np.any(lo >= hi):
    raise ValueError(f"`arena_low` {lo.tolist()} must be < `arena_high` {hi.tolist()}.")
  clear = lambda pts: (np.linalg.norm(pts[:, None] - oc[None], axis=-1) - orad - MARGIN).min(
      axis=1, initial=np.inf)
  if np.any(goals < lo) or np.any(goals > hi) or np.any(clear(goals) <= 0):
    raise ValueError("`goals` must lie inside the arena and outside every obstacle (by MARGIN).")
  if np.any(slo > shi) or np.any(slo < lo) or np.any(shi > hi):
    raise ValueError("`start_low`/`start_high` must be an ordered box inside the arena.")
  pts = np.random.default_rng(0).uniform(slo, shi, size=(4096, 2))
  gclear = (np.linalg.norm(pts[:, None] - goals[None], axis=-1) - goal_radius).min(axis=1)
  if np.mean((clear(pts) > 0) & (gclear > 0)) < 0.25:
    raise ValueError("`start_low`/`start_high`: less than 25% of the start box is free.")
  if not isinstance(horizon, numbers.Integral) or horizon < 1:
    raise ValueError(f"`horizon` must be a positive int, got {horizon!r}.")
  validation.check_option("reward_type", reward_type, REWARDS)
  f = lambda v: jnp.asarray(v, jnp.float32)
  return PointMassParams(f(oc), f(orad), f(goals), f(goal_radius), f(slo), f(shi), f(lo), f(hi),
                         f(dt), f(max_speed), int(horizon), reward_type, bool(goal_conditioned))


def _first_contact(p: Array, d: Array, params: PointMassParams) -> Tuple[Array, Array]:
  """(s, normal): the fraction s in [0, 1] of the segment p -> p + d [2] travelled before touching
  an inflated obstacle or wall, and the outward contact normal [2] (zeros if nothing is hit)."""
  q = p - params.obstacle_centers                               # [K, 2]
  re = params.obstacle_radii + MARGIN
  a = jnp.maximum(d @ d, 1e-30)
  b, qq = q @ d, jnp.sum(q**2, axis=-1)
  cc = qq - re**2
  disc = b**2 - a * cc
  s_out = jnp.where((cc > 0) & (b < 0) & (disc >= 0),
                    (-b - jnp.sqrt(jnp.maximum(disc, 0.0))) / a, jnp.inf)
  # Already in the margin band: blocked only when clearly moving inwards (a tangent slide passes).
  s_in = jnp.where((cc <= 0) & (b < -1e-4 * jnp.sqrt(a * qq)), 0.0, jnp.inf)
  s_circ = jnp.minimum(s_out, s_in)
  hit_pt = p + jnp.minimum(s_circ, 1.0)[:, None] * d - params.obstacle_centers
  n_circ = hit_pt / jnp.maximum(jnp.linalg.norm(hit_pt, axis=-1, keepdims=True), 1e-12)
  safe_d = jnp.where(d == 0, 1.0, d)
  s_hi = jnp.where(d > 0, jnp.maximum((params.arena_high - MARGIN - p) / safe_d, 0.0), jnp.inf)
  s_lo = jnp.where(d < 0, jnp.maximum((params.arena_low + MARGIN - p) / safe_d, 0.0), jnp.inf)
  s_all = jnp.concatenate([s_circ, s_hi, s_lo])
  n_all = jnp.concatenate([n_circ, -jnp.eye(2), jnp.eye(2)])
  j = jnp.argmin(s_all)
  hit = s_all[j] <= 1.0
  return jnp.where(hit, s_all[j], 1.0), jnp.where(hit, n_all[j], 0.0)


def _is_free(p: Array, params: PointMassParams) -> Array:
  """Bool: p [2] is outside every obstacle (distance >= radius) and inside the arena."""
  dist = jnp.linalg.norm(p - params.obstacle_centers, axis=-1)
  return (jnp.all(dist >= params.obstacle_radii) & jnp.all(p >= params.arena_low)
          & jnp.all(p <= params.arena_high))


def move(p: Array, d: Array, params: PointMassParams) -> Array:
  """The position [2] after trying the displacement d [2] from a free position p [2]: stop at the
  first contact, slide the rest along it, undo on rounding (module docstring)."""
  s1, n1 = _first_contact(p, d, params)
  p1 = p + s1 * d
  rem = (1.0 - s1) * d
  rem = rem - jnp.minimum(rem @ n1, 0.0) * n1
  s2, _ = _first_contact(p1, rem, params)
  p2 = p1 + s2 * rem
  p1 = jnp.where(_is_free(p1, params), p1, p)
  return jnp.where(_is_free(p2, params), p2, p1)


def _goal_distance(pos: Array, state: PointMassState, params: PointMassParams) -> Array:
  """Distance from pos [2] to the state's goal (goal-conditioned) or to the nearest goal."""
  if params.goal_conditioned:
    return jnp.linalg.norm(pos - state.goal)
  return jnp.min(jnp.linalg.norm(pos - params.goals, axis=-1))


class PointMass(api.Environment):
  """The point mass behind the `Environment` API; action [2] float in [-1, 1]^2 (clipped)."""

  def default_params(self) -> PointMassParams:
    """`make_params()` with its defaults."""
    return make_params()

  def _obs(self, state: PointMassState, params: PointMassParams) -> Array:
    """(pos, goal) [4] when goal-conditioned, else pos [2]."""
    return jnp.concatenate([state.pos, state.goal]) if params.goal_conditioned else state.pos

  def reset(self, key: Array, params: PointMassParams) -> Tuple[Array, PointMassState]:
    """Draws a goal index uniformly, then a start: the first of 128 uniform candidates in the
    start box clear of obstacles (by MARGIN) and outside every counting goal's radius."""
    k_goal, k_start = jax.random.split(key)
    gi = jax.random.randint(k_goal, (), 0, params.goals.shape[0], jnp.int32)
    goal = params.goals[gi]
    cand = jax.random.uniform(k_start, (NUM_START_CANDIDATES, 2), minval=params.start_low,
                              maxval=params.start_high)
    dist_obs = jnp.linalg.norm(cand[:, None] - params.obstacle_centers[None], axis=-1)
    clear = jnp.min(dist_obs - params.obstacle_radii - MARGIN, axis=1, initial=jnp.inf)
    counting = goal[None] if params.goal_conditioned else params.goals
    gclear = jnp.min(jnp.linalg.norm(cand[:, None] - counting[None], axis=-1), axis=1)
    score = jnp.minimum(clear, gclear - params.goal_radius)
    i = jnp.where(jnp.any(score > 0), jnp.argmax(score > 0), jnp.argmax(score))
    state = PointMassState(cand[i], goal, gi, jnp.zeros((), jnp.int32))
    return self._obs(state, params), state

  def step(self, key: Array, state: PointMassState, action: Array,
           params: PointMassParams) -> api.Transition:
    """Moves by dt * max_speed * clip(action, -1, 1) (blocked, sliding); `key` is unused (the
    dynamics are deterministic). Raises ValueError naming `action` on a wrong shape, a non-float
    dtype, or (when concrete) a non-finite value; out-of-box values are clipped, not refused."""
    spaces.check_in_space("action", action, spaces.Box(-np.inf, np.inf, (2,)))
    d = params.dt * params.max_speed * jnp.clip(action.astype(jnp.float32), -1.0, 1.0)
    pos = move(state.pos, d, params)
    dist = _goal_distance(pos, state, params)
    reached = dist <= params.goal_radius
    reward = -dist if params.reward_type == "dense" else reached.astype(jnp.float32)
    t = state.t + 1
    new = state.replace(pos=pos, t=t)
    return api.Transition(self._obs(new, params), new, reward, reached,
                          (t >= params.horizon) & ~reached, {})

  def action_space(self, params: PointMassParams) -> spaces.Box:
    """[-1, 1]^2 (a velocity in units of max_speed)."""
    return spaces.Box(-1.0, 1.0, (2,))

  def observation_space(self, params: PointMassParams) -> spaces.Box:
    """Shape [4] (goal-conditioned) or [2]."""
    return spaces.Box(-np.inf, np.inf, (4,) if params.goal_conditioned else (2,))


def expert_action(state: PointMassState, params: PointMassParams, clearance: float = 0.05) -> Array:
  """The scripted expert's action [2] in [-1, 1]^2 for one state (vmap for a batch).

  Args:
    state: `PointMassState`; the expert heads for `state.goal` (the drawn goal).
    params: `PointMassParams`.
    clearance: extra distance kept from obstacles when steering around them (world units).
  Returns:
    a unit-speed heading (scaled down near the goal so as not to overshoot it), as an action.
  """
  p = state.pos
  to_goal = state.goal - p
  dist_g = jnp.linalg.norm(to_goal)
  u = to_goal / jnp.maximum(dist_g, 1e-12)
  speed = jnp.minimum(1.0, dist_g / (params.dt * params.max_speed))
  if params.obstacle_radii.shape[0] == 0:
    return jnp.clip(u * speed, -1.0, 1.0)
  q = params.obstacle_centers - p                               # [K, 2]
  re = params.obstacle_radii + clearance
  dc = jnp.linalg.norm(q, axis=-1)
  along = q @ u                                                 # centre's distance along u
  perp2 = jnp.maximum(dc**2 - along**2, 0.0)                    # squared distance off the line
  entry = along - jnp.sqrt(jnp.maximum(re**2 - perp2, 0.0))     # where the line enters the disc
  blocks = (along > 0) & (perp2 < re**2) & (entry < dist_g)
  k = jnp.argmin(jnp.where(blocks, dc, jnp.inf))                # nearest blocking obstacle
  # Its cluster: obstacles whose clearance-inflated discs overlap, transitively (no passage).
  gap = jnp.linalg.norm(q[:, None] - q[None], axis=-1) - re[:, None] - re[None]
  reach = gap < 0
  for _ in range(int(np.ceil(np.log2(max(q.shape[0], 2))))):
    reach = reach | (reach.astype(jnp.float32) @ reach.astype(jnp.float32) > 0)
  # Signed angles from u of each centre, and the half-angles under which the discs are seen.
  delta = jnp.arctan2(u[0] * q[:, 1] - u[1] * q[:, 0], along)
  alpha = jnp.arcsin(jnp.clip(re / jnp.maximum(dc, 1e-12), 0.0, 1.0))
  rot = lambda a: jnp.array([jnp.cos(a) * u[0] - jnp.sin(a) * u[1],
                            jnp.sin(a) * u[0] + jnp.cos(a) * u[1]])
  # Polar angles about each centre of the agent and the goal, for the arcs around the discs.
  to_g = state.goal - params.obstacle_centers                   # [K, 2]
  dg = jnp.linalg.norm(to_g, axis=-1)
  phi_p, phi_g = jnp.arctan2(-q[:, 1], -q[:, 0]), jnp.arctan2(to_g[:, 1], to_g[:, 0])
  off = (jnp.arccos(jnp.clip(re / jnp.maximum(dc, 1e-12), 0.0, 1.0))
         + jnp.arccos(jnp.clip(re / jnp.maximum(dg, 1e-12), 0.0, 1.0)))
  legs = jnp.sqrt(jnp.maximum(dc**2 - re**2, 0.0)) + jnp.sqrt(jnp.maximum(dg**2 - re**2, 0.0))

  def detour(side):
    """Heading to the cluster's extreme tangent on one side (+1: left of u, passing clockwise
    about the centres; -1: right, counter-clockwise) and a lower bound on the path length that
    way: a path around the cluster passes each member on that side, so it is at least the
    longest of the members' shortest paths (tangent, arc, tangent; straight if that side is
    clear)."""
    ang = jnp.where(reach[k], delta + side * alpha, -side * jnp.inf)
    arc = jnp.mod(side * (phi_p - phi_g), 2.0 * jnp.pi) - off
    length = jnp.where(arc > 0, legs + re * arc, dist_g)
    return rot(ang[jnp.argmax(side * ang)]), jnp.max(jnp.where(reach[k], length, 0.0))

  (h_left, l_left), (h_right, l_right) = detour(1.0), detour(-1.0)
  heading = jnp.where(jnp.any(blocks), jnp.where(l_left <= l_right, h_left, h_right), u)
  return jnp.clip(heading * speed, -1.0, 1.0)
