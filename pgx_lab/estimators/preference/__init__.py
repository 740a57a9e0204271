"""Pairwise and contrastive preference losses."""

from pgx_lab.estimators.preference.contrastive import ContrastivePairBatch
from pgx_lab.estimators.preference.contrastive import CoPGLoss
from pgx_lab.estimators.preference.contrastive import copg
from pgx_lab.estimators.preference.pairwise import PairwiseLoss
from pgx_lab.estimators.preference.pairwise import dpo
from pgx_lab.estimators.preference.pairwise import hinge
from pgx_lab.estimators.preference.pairwise import ipo
from pgx_lab.estimators.preference.pairwise import rpo
from pgx_lab.estimators.preference.pairwise import sft_nll
