"""The chain-of-digits task of the mcts_dpo paper module and its two policies (private helper).

Task (spec llm_post_training.md section 12(d)). A prompt is a target g in {0..S}; a response is D
steps of `step_len` digits in {0..V-1} (T = D * step_len tokens, S = T (V - 1)); reward 1 iff the
digits sum to g.

Policies, both exposing `init(key)`, `logits(params, target, pos, running_sum, tokens)`,
`sample_tokens`, `token_logp`, the exact `accuracy` and `response_entropy` (a collapse check):
  - `TabularPolicy`: logits theta[g, t, running sum, V], one free parameter vector per state, so an
    update at one state changes nothing elsewhere.
  - `MLPPolicy`: shared parameters, an MLP (two hidden layers of 64, ReLU) over the features
    one-hot(g) + one-hot(t) + one-hot(running sum) + one-hot of each digit so far (zeros for the
    positions not yet generated); the last layer is zero-initialised, so the initial policy is
    uniform, as the tabular one. It stands in for the paper's LLM policy (Xie et al. 2024,
    arXiv 2405.00451), whose parameters are shared across all prefixes.
`step_model(task, policy)` joins a policy and the task into `step_search`'s `StepModel`; its
params are (policy params, (successes, counts)) where the second part is the learned
self-evaluation table V[g, depth, running sum] (see mcts_dpo.py). Node values follow the authors'
code (YuxiXie/MCTS-DPO `mcts_rl/algorithms/mcts/mcts/search_config.py`, `get_values`): the value
of a non-terminal node is the self-evaluation confidence c in [0, 1]; a finished response scores
c + 1 when correct and c - 1 when wrong (`score += eval_correct_score`, +-1), so a wrong answer
ranks below every partial response and a right one above. These values in [-1, 2] are mapped
into [0, 1] by v -> (v + 1) / 3 for `step_search` (mctx's min-max bounds are [0, 1]): with
`reward_alpha` = 2/3, `step_search`'s terminal value alpha * outcome + (1 - alpha) * self_eval is
exactly (c + 2 outcome) / 3 when `self_eval` returns c at terminal nodes and (c + 1) / 3 elsewhere.
"""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pgx_lab.rollout.step_search import StepModel


class Task:
  """Sizes of the chain-of-digits task: V digits, D steps of k tokens, K search candidates."""

  def __init__(self, digits, num_steps, step_len, candidates):
    """digits V, num_steps D, step_len k, candidates K (all positive ints)."""
    for name, v in (("digits", digits), ("num_steps", num_steps), ("step_len", step_len),
                    ("candidates", candidates)):
      if not isinstance(v, int) or v < 1:
        raise ValueError(f"`{name}` must be a positive int, got {v!r}.")
    self.v, self.d, self.k, self.c = digits, num_steps, step_len, candidates
    self.t = num_steps * step_len
    self.s = self.t * (digits - 1)


class _Policy:
  """Shared sampling / scoring on top of `logits(params, target, pos, running_sum, tokens)`."""

  def __init__(self, task: Task):
    """`task`: the `Task`."""
    self.task = task
    self._prefixes = self._enumerate_prefixes()

  def _enumerate_prefixes(self):
    """Every prefix of length 0..T-1 (numpy): tokens [M, T], lengths [M], and for every full
    response (V^T of them) the index of its prefix at each position, [V^T, T], plus the digits."""
    task = self.task
    full = np.array(list(itertools.product(range(task.v), repeat=task.t)), np.int32)
    toks, lens, offset = [], [], []
    for t in range(task.t):
      offset.append(len(toks))
      for p in itertools.product(range(task.v), repeat=t):
        toks.append(list(p) + [0] * (task.t - t))
        lens.append(t)
    radix = task.v ** np.arange(task.t, 0, -1)  # V^(T-t): dividing gives the length-t prefix
    idx = np.array(offset)[None, :] + np.arange(len(full))[:, None] // radix[None, :]
    return np.array(toks, np.int32), np.array(lens, np.int32), idx.astype(np.int32), full

  def response_logp(self, params):
    """[S+1, V^T] log pi(y | g) of every full response y (rows of the enumeration) per target."""
    toks, lens, idx, full = self._prefixes
    sums = toks.sum(-1)

    def one(g):
      logits = jax.vmap(lambda tk, n, s: self.logits(params, g, n, s, tk))(toks, lens, sums)
      return jnp.sum(jax.nn.log_softmax(logits)[idx, full], axis=-1)
    return jax.vmap(one)(jnp.arange(self.task.s + 1))

  def response_entropy(self, params):
    """Entropy (nats) of the response distribution pi(y | g), averaged over targets g.

    T ln V for the uniform policy, 0 for a policy that always writes one response.
    """
    logp = self.response_logp(params)
    return jnp.mean(-jnp.sum(jnp.exp(logp) * logp, axis=-1))

  def sample_tokens(self, params, key, target, tokens, pos0, sum0, n):
    """Samples n digits after the prefix tokens[:pos0] ([T] int32, running sum sum0).

    Returns ([n] int32 digits, their summed log-prob).
    """
    task = self.task

    def body(carry, key):
      pos, s, toks = carry
      logits = self.logits(params, target, pos, s, toks)
      y = jax.random.categorical(key, logits)
      toks = toks.at[jnp.minimum(pos, task.t - 1)].set(y.astype(jnp.int32))
      return (pos + 1, s + y, toks), (y, jax.nn.log_softmax(logits)[y])
    _, (ys, lps) = jax.lax.scan(body, (pos0, sum0, tokens.astype(jnp.int32)),
                                jax.random.split(key, n))
    return ys.astype(jnp.int32), jnp.sum(lps)

  def token_logp(self, params, tokens, target):
    """[T] log pi(y_t | g, y_<t) of a full-length token row `tokens` [T] for target `target`."""
    sums = jnp.cumsum(tokens) - tokens
    logits = jax.vmap(lambda t, s: self.logits(params, target, t, s, tokens))(
        jnp.arange(self.task.t), sums)
    return jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, None], axis=-1)[:, 0]


class TabularPolicy(_Policy):
  """Tabular logits theta[S+1 targets, T positions, S+1 running sums, V] (zeros: uniform)."""

  def init(self, key):
    """Zero logits; `key` is unused (kept for the common interface)."""
    del key
    task = self.task
    return jnp.zeros((task.s + 1, task.t, task.s + 1, task.v))

  def logits(self, params, target, pos, running_sum, tokens):
    """[V] logits at (target, pos, running sum); `tokens` (the prefix) is ignored."""
    del tokens
    task = self.task
    return params[target, jnp.minimum(pos, task.t - 1), jnp.minimum(running_sum, task.s)]

  def accuracy(self, params):
    """Exact success probability averaged over all targets (dynamic programming over sums)."""
    task = self.task

    def one(g):
      def body(p, t):
        probs = jax.nn.softmax(params[g, t], axis=-1)  # [S+1, V]
        new = sum(jnp.pad(p * probs[:, y], (y, 0))[:task.s + 1] for y in range(task.v))
        return new, None
      p0 = jnp.zeros((task.s + 1,)).at[0].set(1.0)
      p, _ = jax.lax.scan(body, p0, jnp.arange(task.t))
      return p[g]
    return jnp.mean(jax.vmap(one)(jnp.arange(task.s + 1)))


class _MLP(nn.Module):
  """Two hidden ReLU layers of `width`, a zero-initialised output layer of `out` logits."""
  width: int
  out: int

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(self.width)(x))
    x = nn.relu(nn.Dense(self.width)(x))
    return nn.Dense(self.out, kernel_init=nn.initializers.zeros)(x)


class MLPPolicy(_Policy):
  """Shared-parameter policy: `_MLP` over one-hot features of (g, t, running sum, digits so far)."""

  def __init__(self, task: Task, width: int = 64):
    """`task`: the `Task`; `width`: hidden units per layer (positive int)."""
    if not isinstance(width, int) or width < 1:
      raise ValueError(f"`width` must be a positive int, got {width!r}.")
    super().__init__(task)
    self.net = _MLP(width, task.v)
    self.num_features = 2 * (task.s + 1) + task.t + task.t * task.v

  def features(self, target, pos, running_sum, tokens):
    """[F] float features of the state: target, position, running sum, digits tokens[:pos]."""
    task = self.task
    digits = jax.nn.one_hot(tokens, task.v) * (jnp.arange(task.t) < pos)[:, None]
    return jnp.concatenate([jax.nn.one_hot(target, task.s + 1),
                            jax.nn.one_hot(jnp.minimum(pos, task.t - 1), task.t),
                            jax.nn.one_hot(jnp.minimum(running_sum, task.s), task.s + 1),
                            digits.reshape(-1)])

  def init(self, key):
    """MLP params (a plain pytree) for PRNG `key`."""
    return self.net.init(key, jnp.zeros((self.num_features,)))["params"]

  def logits(self, params, target, pos, running_sum, tokens):
    """[V] logits at the state (target, pos, running sum, prefix tokens[:pos]) of `tokens` [T]."""
    x = self.features(target, pos, running_sum, tokens)
    return self.net.apply({"params": params}, x)

  def accuracy(self, params):
    """Exact success probability averaged over all targets (enumerates all V^T responses)."""
    full = self._prefixes[3]
    hit = jnp.asarray(full.sum(-1))[None, :] == jnp.arange(self.task.s + 1)[:, None]
    return jnp.mean(jnp.sum(jnp.exp(self.response_logp(params)) * hit, axis=-1))


def initial_accuracy(policy, keys):
  """[seeds] exact accuracy of `policy.init(fold_in(key, 7))` for each key of `keys` [seeds].

  Init and accuracy run as two jits on purpose: in one program the zero-initialised output layer
  is a compile-time constant, and about one compilation in 15 to 20 then returns NaN for every
  seed (XLA CPU, jax 0.10.2, reproduced in isolation; a given executable is always right or
  always NaN). With the parameters passed in as an argument: no NaN in 60 compilations.
  """
  theta = jax.jit(jax.vmap(lambda k: policy.init(jax.random.fold_in(k, 7))))(keys)
  return jax.jit(jax.vmap(policy.accuracy))(theta)


def step_model(task: Task, policy) -> StepModel:
  """The `StepModel` for `step_search`; its params are (policy params, (successes, counts)).

  Use it with `reward_alpha` = 2/3 (_mcts_dpo_train.HPARAMS) to get the authors' node values mapped
  into [0, 1] (module docstring).
  """

  def propose(params, key, state):
    theta, _ = params
    target, s = state.env
    keys = jax.random.split(key, task.c)
    return jax.vmap(lambda kk: policy.sample_tokens(theta, kk, target, state.tokens,
                                                    state.length, s, task.k))(keys)

  def env_step(env, step):
    return env[0], env[1] + jnp.sum(step)

  def outcome(env):
    return (env[0] == env[1]).astype(jnp.float32)

  def self_eval(params, state):
    # The table's confidence c; reported as (c + 1) / 3 at non-terminal nodes and as c at
    # terminal ones, which with reward_alpha = 2/3 gives the code's values / 3 (module docstring).
    _, (succ, count) = params
    idx = (state.env[0], jnp.minimum(state.depth, task.d), jnp.minimum(state.env[1], task.s))
    conf = (succ[idx] + 0.5) / (count[idx] + 1.0)
    return jnp.where(state.depth >= task.d, conf, (conf + 1.0) / 3.0)

  return StepModel(propose, env_step, outcome, self_eval)
