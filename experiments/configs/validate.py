"""Validation of training configs: an unknown field, a wrong type or an out-of-range value is a
ValueError naming `config.<field>`, raised before anything compiles.

Every kind of run ("env", "tokens", "tabular") has a schema: field -> (type, rule). A config must
have exactly the schema's fields (a missing one is an error too, so a typo never silently falls
back to a default); ints are accepted where a float is expected, bools never where a number is.
"""

from typing import Any, Callable, Dict, Tuple

import ml_collections

# rule: (predicate, description of the allowed values)
Rule = Tuple[Callable[[Any], bool], str]

POSITIVE: Rule = (lambda v: v > 0, "> 0")
NON_NEGATIVE: Rule = (lambda v: v >= 0, ">= 0")
UNIT_OPEN: Rule = (lambda v: 0 < v < 1, "in (0, 1)")
UNIT: Rule = (lambda v: 0 <= v <= 1, "in [0, 1]")
ANY: Rule = (lambda v: True, "anything")


def one_of(*options) -> Rule:
  """A rule accepting only `options`."""
  return (lambda v: v in options, f"one of {list(options)}")


def at_least(n) -> Rule:
  """A rule accepting values >= n."""
  return (lambda v: v >= n, f">= {n}")


# Fields every kind has. Run-length and logging fields are left out of the workdir fingerprint
# (`pgx_lab.train.loop.RUN_LENGTH_FIELDS`), so a resumed run may train longer or log differently.
COMMON: Dict[str, Tuple[type, Rule]] = {
    "kind": (str, one_of("env", "tokens", "tabular")),
    "seed": (int, NON_NEGATIVE),
    "num_updates": (int, POSITIVE),     # update steps in the whole run
    "chunk_size": (int, POSITIVE),      # updates per jitted chunk: eval, metrics, checkpoint
    "save_every": (int, POSITIVE),      # updates between checkpoints (a multiple of chunk_size)
    "keep": (int, POSITIVE),            # checkpoints kept
    "learning_rate": (float, POSITIVE),
    "max_grad_norm": (float, NON_NEGATIVE),   # 0: no clipping
    "progress": (bool, ANY),
    "tensorboard": (bool, ANY),
}

SCHEMAS: Dict[str, Dict[str, Tuple[type, Rule]]] = {
    "tabular": {
        **COMMON,
        "num_seeds": (int, POSITIVE),
        "mdp": (str, one_of("garnet")),
        "num_states": (int, POSITIVE),
        "num_actions": (int, at_least(2)),
        "branching": (int, POSITIVE),
        "horizon": (int, POSITIVE),
        "gamma": (float, UNIT),
        "mdp_seed": (int, NON_NEGATIVE),
        "batch_size": (int, POSITIVE),            # trajectories per update
        "baseline": (str, one_of("none", "batch", "loo")),
    },
    "tokens": {
        **COMMON,
        "estimator": (str, one_of("grpo", "gspo", "dr_grpo")),
        "task": (str, one_of("copy", "reverse", "sort", "addition")),
        "max_difficulty": (int, POSITIVE),
        "reward_type": (str, one_of("exact", "partial")),   # partial credit: dense rewards
        "d_model": (int, POSITIVE),
        "num_layers": (int, POSITIVE),
        "num_heads": (int, POSITIVE),
        "prompts_per_batch": (int, POSITIVE),
        "group_size": (int, at_least(2)),
        "epochs": (int, POSITIVE),                # gradient steps per sampled batch
        "clip_eps": (float, POSITIVE),            # eps_low (GRPO, Dr.GRPO) / GSPO's eps_low
        "clip_eps_high": (float, POSITIVE),       # eps_high
        "kl_beta": (float, NON_NEGATIVE),
        "temperature": (float, POSITIVE),
        "pretrain": (bool, ANY),                  # False: RL from a random init (tiny tests)
        "pretrain_low": (float, UNIT),
        "pretrain_high": (float, UNIT),
        "pretrain_max_steps": (int, POSITIVE),
        "pretrain_lr": (float, POSITIVE),
        "pretrain_eval_every": (int, POSITIVE),
        "eval_prompts": (int, POSITIVE),
    },
    "env": {
        **COMMON,
        "num_seeds": (int, POSITIVE),
        "env_name": (str, one_of("CartPole-v1", "Acrobot-v1", "MountainCar-v0")),
        "num_envs": (int, POSITIVE),
        "num_steps": (int, POSITIVE),             # rollout length per update
        "update_epochs": (int, POSITIVE),
        "num_minibatches": (int, POSITIVE),
        "gamma": (float, UNIT),
        "gae_lambda": (float, UNIT),
        "clip_eps": (float, POSITIVE),
        "entropy_coef": (float, NON_NEGATIVE),
        "value_coef": (float, NON_NEGATIVE),
        "hidden_size": (int, POSITIVE),
        "anneal_lr": (bool, ANY),
        "eval_envs": (int, POSITIVE),
    },
}


def _type_ok(value: Any, typ: type) -> bool:
  if typ is bool:
    return isinstance(value, bool)
  if isinstance(value, bool):
    return False
  if typ is float:
    return isinstance(value, (int, float))
  return isinstance(value, typ)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming `config.<field>` for the first invalid field of `config`.

  Args:
    config: a training config (`get_config()` of a file in this package, possibly overridden).
  """
  if not isinstance(config, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    raise ValueError(f"`config` must be an ml_collections ConfigDict, got {type(config).__name__}.")
  kind = config.get("kind")
  if kind not in SCHEMAS:
    raise ValueError(f"`config.kind` must be one of {sorted(SCHEMAS)}, got {kind!r}.")
  schema = SCHEMAS[kind]
  for field in config.keys():
    if field not in schema:
      raise ValueError(f"unknown config field `config.{field}` for kind {kind!r}; known: "
                       f"{sorted(schema)}.")
  for field, (typ, (ok, allowed)) in schema.items():
    if field not in config:
      raise ValueError(f"missing config field `config.{field}` for kind {kind!r}.")
    value = config[field]
    if not _type_ok(value, typ):
      raise ValueError(f"`config.{field}` must be a {typ.__name__}, got {value!r} "
                       f"({type(value).__name__}).")
    if not ok(value):
      raise ValueError(f"`config.{field}` must be {allowed}, got {value!r}.")
  _cross_checks(config)


def _cross_checks(c) -> None:
  """Relations between fields."""
  if c.save_every % c.chunk_size:
    raise ValueError(f"`config.save_every` ({c.save_every}) must be a multiple of "
                     f"`config.chunk_size` ({c.chunk_size}): checkpoints fall between chunks.")
  if c.num_updates % c.chunk_size:
    raise ValueError(f"`config.num_updates` ({c.num_updates}) must be a multiple of "
                     f"`config.chunk_size` ({c.chunk_size}).")
  if c.kind == "tabular" and c.branching > c.num_states:
    raise ValueError(f"`config.branching` ({c.branching}) must be <= `config.num_states` "
                     f"({c.num_states}).")
  if c.kind == "tabular" and c.baseline == "loo" and c.batch_size < 2:
    raise ValueError(f"`config.batch_size` must be >= 2 for the leave-one-out baseline, got "
                     f"{c.batch_size}.")
  if c.kind == "tokens":
    if c.d_model % c.num_heads:
      raise ValueError(f"`config.d_model` ({c.d_model}) must be divisible by `config.num_heads` "
                       f"({c.num_heads}).")
    if c.pretrain_low > c.pretrain_high:
      raise ValueError(f"`config.pretrain_low` ({c.pretrain_low}) must be <= "
                       f"`config.pretrain_high` ({c.pretrain_high}).")
  if c.kind == "env":
    rows = c.num_envs * c.num_steps
    if rows % c.num_minibatches:
      raise ValueError(f"`config.num_minibatches` ({c.num_minibatches}) must divide num_envs * "
                       f"num_steps = {rows}.")

