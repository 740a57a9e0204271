"""Pairwise and contrastive preference losses (DPO, cDPO, IPO, hinge, RPO, CoPG, step-level DPO)."""

from pgx_lab.estimators.preference.contrastive import ContrastivePairBatch
from pgx_lab.estimators.preference.contrastive import CoPGLoss
from pgx_lab.estimators.preference.contrastive import copg
from pgx_lab.estimators.preference.pairwise import PairwiseLoss
from pgx_lab.estimators.preference.pairwise import dpo
from pgx_lab.estimators.preference.pairwise import hinge
from pgx_lab.estimators.preference.pairwise import ipo
from pgx_lab.estimators.preference.pairwise import rpo
from pgx_lab.estimators.preference.pairwise import sft_nll
from pgx_lab.estimators.preference.step_dpo import StepPairs
from pgx_lab.estimators.preference.step_dpo import build_pairs
from pgx_lab.estimators.preference.step_dpo import conservative_smoothing
from pgx_lab.estimators.preference.step_dpo import refresh_reference
from pgx_lab.estimators.preference.step_dpo import step_dpo_loss
