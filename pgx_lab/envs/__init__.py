"""Functional environments with exact solutions: pure, jittable, vmappable.

Every environment implements `api.Environment` (`reset`, `step`, spaces); tabular MDPs and the LQR
also give exact values, returns and gradients.
"""

from pgx_lab.envs import tabular_generators
from pgx_lab.envs import token_tasks
from pgx_lab.envs.api import Environment
from pgx_lab.envs.api import Transition
from pgx_lab.envs.api import auto_reset_step
from pgx_lab.envs.bandits import SequenceBandit
from pgx_lab.envs.lqr import LQR
from pgx_lab.envs.point_mass import PointMass
from pgx_lab.envs.tabular import TabularMDP


def __getattr__(name):
  # gymnax creates arrays when imported, which starts JAX's backend: import it only when used, so
  # `jax.distributed.initialize` can still run after `import pgx_lab.envs`.
  if name == "GymnaxEnv":
    from pgx_lab.envs.gymnax_adapter import GymnaxEnv  # pylint: disable=import-outside-toplevel
    return GymnaxEnv
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
