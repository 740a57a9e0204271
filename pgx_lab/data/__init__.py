"""Offline datasets: RLDS episodes and token reward/preference datasets, stored as ArrayRecord
through tensorflow-datasets (no TensorFlow), and their generation from environments."""

from pgx_lab.data.generate import BEHAVIOURS, episode_from_transitions, generate_episodes
from pgx_lab.data.generate import noisy_policy, random_policy
from pgx_lab.data.rlds import Episodes, IncompleteDatasetError, read_episodes, write_episodes
from pgx_lab.data.token_datasets import PreferenceData, RewardData
from pgx_lab.data.token_datasets import read_preference_dataset, read_reward_dataset
from pgx_lab.data.token_datasets import write_preference_dataset, write_reward_dataset
