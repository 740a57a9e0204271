"""Second-order policy-gradient tools: Hessian-vector products, the score-function Hessian
estimator, and N-PG-IGT / (N)-HARPG (Fatkhullin et al., ICML 2023) as optax transformations, and CAPO's
curvature-aware token mask (Melo, Abate, Gal 2025).

The functions `hvp.hvp` and `harpg.harpg` share their module's name, so they are reached through
their modules (`from pgx_lab.second_order import harpg; harpg.harpg(...)`), never re-exported
here (re-exporting would shadow the submodules)."""

from pgx_lab.second_order import harpg
from pgx_lab.second_order import hvp
from pgx_lab.second_order import igt
from pgx_lab.second_order import score_hessian
from pgx_lab.second_order.harpg import HARPGState, harpg_momentum
from pgx_lab.second_order.hvp import grad_and_hvp, tree_norm, tree_vdot
from pgx_lab.second_order.igt import IGTState, decaying_step, igt_momentum, npg_igt, query_point
from pgx_lab.second_order.score_hessian import (gpomdp_surrogate, reward_to_go,
                                                score_hessian_terms, score_hessian_vp)
from pgx_lab.second_order import capo
from pgx_lab.second_order.capo import (CapoConfig, HeadAdamState, adam_preconditioner, capo_estimator,
                                       capo_mask, full_network_terms, init_state, precomputed_mask,
                                       with_mask)
