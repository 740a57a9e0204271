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
from pgx_lab.envs.gymnax_adapter import GymnaxEnv
from pgx_lab.envs.lqr import LQR
from pgx_lab.envs.point_mass import PointMass
from pgx_lab.envs.tabular import TabularMDP
