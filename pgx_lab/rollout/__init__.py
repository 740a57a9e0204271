"""Sampling from policies with `lax.scan`: environment rollouts and grouped sequence rollouts."""

from pgx_lab.rollout.env_rollout import model_policy_fn
from pgx_lab.rollout.env_rollout import model_value_fn
from pgx_lab.rollout.env_rollout import rollout
from pgx_lab.rollout.sequences import response_logp
from pgx_lab.rollout.sequences import sample_groups
