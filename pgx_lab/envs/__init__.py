"""Functional environments with exact solutions: pure, jittable, vmappable."""

from pgx_lab.envs.bandits import SequenceBandit
