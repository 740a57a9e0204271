"""Rewards: critic outputs turned into per-token rewards (Text2Grad span scores, DSP hint rewards,
KL shaping).

Pure array functions; imports only `pgx_lab.types`, `pgx_lab.validation` and estimators/.
"""

from pgx_lab.rewards.hints import hint_rewards
from pgx_lab.rewards.hints import keyword_step_rewards
from pgx_lab.rewards.hints import last_valid_index
from pgx_lab.rewards.hints import rouge1_f1
from pgx_lab.rewards.hints import terminal_hint_reward
from pgx_lab.rewards.kl_control import adaptive_kl_controller
from pgx_lab.rewards.kl_control import fixed_kl_controller
from pgx_lab.rewards.kl_control import full_kl
from pgx_lab.rewards.kl_control import KLControlState
from pgx_lab.rewards.kl_control import KLController
from pgx_lab.rewards.kl_control import kl_shaped_rewards
from pgx_lab.rewards.kl_control import mean_sequence_kl
from pgx_lab.rewards.kl_control import terminal_scores
from pgx_lab.rewards.spans import Critique
from pgx_lab.rewards.spans import positional_critic
from pgx_lab.rewards.spans import span_to_token_scores
from pgx_lab.rewards.spans import token_to_word_scores
from pgx_lab.rewards.spans import word_scores_from_spans
