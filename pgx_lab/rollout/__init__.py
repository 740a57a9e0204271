"""Sampling from policies with `lax.scan`: environment rollouts."""

from pgx_lab.rollout.env_rollout import model_policy_fn
from pgx_lab.rollout.env_rollout import model_value_fn
from pgx_lab.rollout.env_rollout import rollout
