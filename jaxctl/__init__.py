"""jaxctl: second-order policy optimization and model-based control in JAX.

Layers (dependencies point down only):

- numerical core: `jacobians` (per-sample gradients), `fisher` (Fisher,
  clipped inverse, natural gradients), `gauss_newton` (GN products), `cg`;
- optimizers: `npg` (normalized natural gradient, optax transformation),
  `hf` (Hessian-free), `mpc` (random shooting, CEM, MPPI);
- models: `nets` (MLP, policies, dynamics, layered RNN), `arm` (2-link arm
  plant), `reach_task`, `rl` (rollouts, GAE), `envs` (task rewards, gymnax
  adapters);
- applications: `jaxctl.agents` and the `jaxctl` command.

Names that exist in several modules (e.g. `rollout`) stay qualified:
`jaxctl.rl.rollout`, `jaxctl.mpc.rollout`, `jaxctl.reach_task.rollout`.
"""

__version__ = "0.1.0"

from jaxctl import arm, mpc, reach_task, rl
from jaxctl.cg import CGResult, MartensCGResult, cg, martens_cg
from jaxctl.fisher import (
    clipped_inverse,
    fisher_matrix,
    fisher_operator,
    fisher_vector_product,
    natural_gradient,
)
from jaxctl.gauss_newton import (
    GaussNewtonModel,
    gauss_newton_model,
    gauss_newton_vector_product,
    softmax_cross_entropy,
    squared_error,
)
from jaxctl.hf import HessianFree, HFState, HFStats, hessian_free
from jaxctl.jacobians import per_sample_grads, ravel_per_sample
from jaxctl.mpc import PlanResult, cem, jit_planner, mppi, random_shooting, shift_actions
from jaxctl.nets.dynamics import (
    DynamicsModel,
    NormStats,
    Transitions,
    dynamics_init,
    dynamics_predict,
    dynamics_train,
    normalization_stats,
    open_loop_prediction,
)
from jaxctl.nets.mlp import mlp_apply, mlp_init
from jaxctl.nets.policies import (
    Policy,
    ValueFunction,
    categorical_policy,
    gaussian_policy,
    value_function,
)
from jaxctl.nets.rnn import RNNOutputs, RNNSpec, rnn_apply, rnn_init, rnn_spec
from jaxctl.npg import NPGState, normalized_step, npg
from jaxctl.rl import EpisodeStats, Trajectory, gae, score_gradient

__all__ = [
    "CGResult",
    "DynamicsModel",
    "EpisodeStats",
    "GaussNewtonModel",
    "HFState",
    "HFStats",
    "HessianFree",
    "MartensCGResult",
    "NPGState",
    "NormStats",
    "PlanResult",
    "Policy",
    "RNNOutputs",
    "RNNSpec",
    "Trajectory",
    "Transitions",
    "ValueFunction",
    "categorical_policy",
    "cem",
    "cg",
    "clipped_inverse",
    "dynamics_init",
    "dynamics_predict",
    "dynamics_train",
    "fisher_matrix",
    "fisher_operator",
    "fisher_vector_product",
    "gae",
    "gauss_newton_model",
    "gauss_newton_vector_product",
    "gaussian_policy",
    "hessian_free",
    "jit_planner",
    "martens_cg",
    "mlp_apply",
    "mlp_init",
    "mppi",
    "natural_gradient",
    "normalization_stats",
    "normalized_step",
    "npg",
    "open_loop_prediction",
    "per_sample_grads",
    "random_shooting",
    "ravel_per_sample",
    "rnn_apply",
    "rnn_init",
    "rnn_spec",
    "score_gradient",
    "shift_actions",
    "softmax_cross_entropy",
    "squared_error",
    "value_function",
]
