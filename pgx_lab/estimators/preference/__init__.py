"""Pairwise and contrastive preference losses."""

from pgx_lab.estimators.preference.pairwise import PairwiseLoss
from pgx_lab.estimators.preference.pairwise import dpo
from pgx_lab.estimators.preference.pairwise import hinge
from pgx_lab.estimators.preference.pairwise import ipo
