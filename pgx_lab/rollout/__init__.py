"""Sampling from policies with `lax.scan`: environment rollouts, grouped sequence rollouts, and
step-level tree search (mctx) over reasoning steps."""

from pgx_lab.rollout.env_rollout import model_policy_fn
from pgx_lab.rollout.env_rollout import model_value_fn
from pgx_lab.rollout.env_rollout import rollout
from pgx_lab.rollout.sequences import response_logp
from pgx_lab.rollout.sequences import sample_groups
from pgx_lab.rollout.step_search import StepModel
from pgx_lab.rollout.step_search import StepState
from pgx_lab.rollout.step_search import all_sibling_sets
from pgx_lab.rollout.step_search import paper_backup
