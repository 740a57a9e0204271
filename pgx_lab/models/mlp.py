"""MLP policies (flax linen) for vector observations: categorical and diagonal Gaussian.

    model = CategoricalPolicy(num_actions=2, value_head=True)
    params = model.init(key, obs)                      # a plain dict pytree {"params": {...}}
    dist, value = model.apply(params, obs)             # obs [..., obs_dim]
    action = sample(key, dist); logp = log_prob(dist, action); h = entropy(dist)

Both modules return `(dist, value)`: `dist` is a `Categorical(logits)` or a
`DiagGaussian(mean, log_std)` (NamedTuples, so pytrees that jit and vmap), `value` is `[...]` when
`value_head=True` and None otherwise. Leading axes of `obs` are batch axes.

The value head has its own torso (separate actor and critic networks, as in PureJaxRL's
`ActorCritic` and the on-policy study of Andrychowicz et al. 2021, "What matters in on-policy
RL?", which found separate networks better than a shared one), so a value loss never moves the
policy's features. Initialisation follows the PPO implementation details (Engstrom et al. 2020;
Huang et al. 2022, "The 37 implementation details of PPO"): orthogonal weights with gain sqrt(2)
in the torso, 0.01 on the policy output (near-uniform / near-zero-mean initial policy), 1.0 on the
value output, zero biases.

Initialising several seeds: use `jax.lax.map` over keys, not `jax.vmap`. A vmapped orthogonal
init is a batched QR (LAPACK geqrf through the FFI), and jaxlib 0.10.2 runs each batched QR's
per-matrix work on the same intra-op thread pool that runs independent QR ops of one program
concurrently: with two threads, two QRs can each wait for work queued behind the other, forever
(reproduced here: `jax.jit(jax.vmap(init))` of six orthogonal (64, 64) kernels over 4 keys hangs
within 300 calls on 2 cores; the same with `lax.map` never does).

The Gaussian is unsquashed: samples are not clipped to an environment's Box (clip them in the
environment wrapper if the task needs it; log-probs refer to the unclipped sample).
"""

import math
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from pgx_lab import validation

Array = jax.Array

ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "gelu": nn.gelu, "silu": nn.silu}
_LOG_2PI = math.log(2.0 * math.pi)


class Categorical(NamedTuple):
  """A categorical distribution over the last axis: logits [..., K] (unnormalised)."""

  logits: Array


class DiagGaussian(NamedTuple):
  """A Gaussian with diagonal covariance: mean [..., D], log_std [..., D] (same shape)."""

  mean: Array
  log_std: Array


Distribution = Union[Categorical, DiagGaussian]


def _check_at_least_1d(name: str, x, kind: str = "float") -> None:
  validation.check_array(name, x, kind=kind)
  if x.ndim < 1:
    raise ValueError(f"`{name}` must have at least one axis (the last is the feature axis), "
                     f"got shape {tuple(x.shape)}.")


def _check_dist(dist) -> None:
  if isinstance(dist, Categorical):
    _check_at_least_1d("dist.logits", dist.logits)
  elif isinstance(dist, DiagGaussian):
    _check_at_least_1d("dist.mean", dist.mean)
    validation.check_array("dist.log_std", dist.log_std)
    validation.check_shape("dist.log_std", dist.log_std, dist.mean.shape, against="dist.mean")
  else:
    raise ValueError(f"`dist` must be a Categorical or a DiagGaussian, got {type(dist).__name__}.")


def log_prob(dist: Distribution, action: Array) -> Array:
  """log pi(action) under `dist`.

  Args:
    dist: `Categorical(logits [..., K])` or `DiagGaussian(mean [..., D], log_std [..., D])`.
    action: int [...] category ids for a Categorical; float [..., D] for a DiagGaussian.

  Returns:
    [...] log-probabilities (log-densities for the Gaussian, summed over the D independent axes).

  Raises:
    ValueError: naming `action` on a wrong shape or dtype, or `dist` on a wrong type.
  """
  _check_dist(dist)
  if isinstance(dist, Categorical):
    validation.check_array("action", action, kind="int")
    validation.check_shape("action", action, dist.logits.shape[:-1], against="dist.logits[..., 0]")
    logp = jax.nn.log_softmax(dist.logits, axis=-1)
    return jnp.take_along_axis(logp, action[..., None].astype(jnp.int32), axis=-1)[..., 0]
  validation.check_array("action", action, kind="float")
  validation.check_shape("action", action, dist.mean.shape, against="dist.mean")
  z = (action - dist.mean) * jnp.exp(-dist.log_std)
  return jnp.sum(-0.5 * z**2 - dist.log_std - 0.5 * _LOG_2PI, axis=-1)


def entropy(dist: Distribution) -> Array:
  """The entropy of `dist`, shape [...]: -sum_k p_k log p_k, or sum_d (log sigma_d + (1 + log 2 pi)/2)."""
  _check_dist(dist)
  if isinstance(dist, Categorical):
    logp = jax.nn.log_softmax(dist.logits, axis=-1)
    p = jnp.exp(logp)
    return -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)
  return jnp.sum(dist.log_std + 0.5 * (1.0 + _LOG_2PI), axis=-1)


def sample(key: Array, dist: Distribution) -> Array:
  """A sample of `dist`: int32 [...] for a Categorical, float [..., D] for a DiagGaussian."""
  _check_dist(dist)
  if isinstance(dist, Categorical):
    return jax.random.categorical(key, dist.logits, axis=-1).astype(jnp.int32)
  noise = jax.random.normal(key, dist.mean.shape, dist.mean.dtype)
  return dist.mean + jnp.exp(dist.log_std) * noise


def mode(dist: Distribution) -> Array:
  """The most likely action (argmax of the logits, or the mean): for greedy evaluation."""
  _check_dist(dist)
  if isinstance(dist, Categorical):
    return jnp.argmax(dist.logits, axis=-1).astype(jnp.int32)
  return dist.mean


def _check_sizes(num_name: str, num: int, hidden_sizes: Sequence[int], activation: str) -> None:
  if isinstance(num, bool) or not isinstance(num, int) or num < 1:
    raise ValueError(f"`{num_name}` must be a positive int, got {num!r}.")
  if not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden_sizes):
    raise ValueError(f"`hidden_sizes` must be positive ints, got {tuple(hidden_sizes)!r}.")
  validation.check_option("activation", activation, tuple(ACTIVATIONS))


def _check_obs(obs: Array) -> None:
  _check_at_least_1d("obs", obs)


class MLP(nn.Module):
  """Dense layers with an activation after each: [..., in] -> [..., hidden_sizes[-1]]."""

  hidden_sizes: Tuple[int, ...] = (64, 64)
  activation: str = "tanh"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    act = ACTIVATIONS[self.activation]
    for h in self.hidden_sizes:
      x = act(nn.Dense(h, kernel_init=nn.initializers.orthogonal(math.sqrt(2.0)))(x))
    return x


def _head(size: int, gain: float, name: str) -> nn.Dense:
  return nn.Dense(size, kernel_init=nn.initializers.orthogonal(gain), name=name)


def _value(module: nn.Module, obs: Array) -> Optional[Array]:
  if not module.value_head:
    return None
  h = MLP(module.hidden_sizes, module.activation, name="critic_torso")(obs)
  return _head(1, 1.0, "value_out")(h)[..., 0]


class CategoricalPolicy(nn.Module):
  """pi(a | s) = softmax(MLP(s)) over `num_actions`, with an optional value head.

  Attributes:
    num_actions: K, the number of discrete actions.
    hidden_sizes: widths of the torso's hidden layers (shared by the critic's own torso).
    activation: one of `ACTIVATIONS`.
    value_head: also return V(s) from a separate torso.

  `__call__(obs [..., obs_dim] float) -> (Categorical(logits [..., K]), value [...] or None)`.
  """

  num_actions: int
  hidden_sizes: Tuple[int, ...] = (64, 64)
  activation: str = "tanh"
  value_head: bool = False

  def __post_init__(self):
    _check_sizes("num_actions", self.num_actions, self.hidden_sizes, self.activation)
    super().__post_init__()

  @nn.compact
  def __call__(self, obs: Array) -> Tuple[Categorical, Optional[Array]]:
    _check_obs(obs)
    h = MLP(self.hidden_sizes, self.activation, name="actor_torso")(obs)
    logits = _head(self.num_actions, 0.01, "policy_out")(h)
    return Categorical(logits), _value(self, obs)


class GaussianPolicy(nn.Module):
  """pi(a | s) = N(mu(s), diag(sigma^2)) over `action_dim` axes, with an optional value head.

  Attributes:
    action_dim: D, the action's size.
    hidden_sizes: widths of the torso's hidden layers (shared by the critic's own torso).
    activation: one of `ACTIVATIONS`.
    value_head: also return V(s) from a separate torso.
    state_dependent_std: False: log sigma is a free parameter vector [D] (PPO's usual choice,
      Schulman et al. 2017); True: log sigma(s) is a second output of the actor torso, clipped to
      `log_std_bounds` (as in SAC, Haarnoja et al. 2018).
    log_std_init: initial log sigma (state-independent) or the bias of the log-sigma output.
    log_std_bounds: (min, max) of a state-dependent log sigma.

  `__call__(obs [..., obs_dim] float) -> (DiagGaussian(mean, log_std [..., D]), value [...] or None)`.
  """

  action_dim: int
  hidden_sizes: Tuple[int, ...] = (64, 64)
  activation: str = "tanh"
  value_head: bool = False
  state_dependent_std: bool = False
  log_std_init: float = 0.0
  log_std_bounds: Tuple[float, float] = (-20.0, 2.0)

  def __post_init__(self):
    _check_sizes("action_dim", self.action_dim, self.hidden_sizes, self.activation)
    lo, hi = self.log_std_bounds
    if not lo < hi:
      raise ValueError(f"`log_std_bounds` must be (min, max) with min < max, got "
                       f"{tuple(self.log_std_bounds)!r}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, obs: Array) -> Tuple[DiagGaussian, Optional[Array]]:
    _check_obs(obs)
    h = MLP(self.hidden_sizes, self.activation, name="actor_torso")(obs)
    mean = _head(self.action_dim, 0.01, "mean_out")(h)
    if self.state_dependent_std:
      raw = nn.Dense(self.action_dim, kernel_init=nn.initializers.orthogonal(0.01),
                     bias_init=nn.initializers.constant(self.log_std_init), name="log_std_out")(h)
      log_std = jnp.clip(raw, *self.log_std_bounds)
    else:
      log_std = self.param("log_std", nn.initializers.constant(self.log_std_init),
                           (self.action_dim,))
      log_std = jnp.broadcast_to(log_std, mean.shape)
    return DiagGaussian(mean, log_std), _value(self, obs)
