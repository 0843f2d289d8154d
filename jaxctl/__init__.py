"""jaxctl: second-order policy optimization and model-based control in JAX.

The folders are the layers; imports point down only (a test checks it):

- `jaxctl.util`: argument checks, pytree predicates, checkpoints;
- `jaxctl.core`: per-sample Jacobians, Fisher matrices and natural-gradient
  solves, Gauss-Newton products, conjugate gradient;
- `jaxctl.optim`: the normalized NPG step (an optax transformation) and
  Hessian-free; `jaxctl.control`: rollouts, GAE, MPC planners;
- `jaxctl.models`: MLPs, policies, the layered RNN, dynamics models;
  `jaxctl.envs`: the arm plants, the reach task, task rewards;
  `jaxctl.spiking`: neurons, synapses, rate networks run as spiking ones;
- `jaxctl.apps`: the `jaxctl` command (nothing imports it).

Every public name is importable from `jaxctl` itself. Names that exist in
several modules (`rollout`) stay qualified: `jaxctl.control.rl.rollout`,
`jaxctl.control.simulate.rollout`, `jaxctl.envs.closed_loop.rollout`.
"""

__version__ = "0.1.0"

from jaxctl import control, core, envs, models, optim, spiking, util  # noqa: F401  (the layers)

import jaxlib as _jaxlib

util.versions.warn_if_broken(_jaxlib.__version__)

from jaxctl.core.cg import CGResult, cg
from jaxctl.core.martens_cg import MartensCGResult, martens_cg
from jaxctl.core.fisher import (
    clipped_inverse,
    fisher_matrix,
    fisher_operator,
    fisher_vector_product,
    natural_gradient,
)
from jaxctl.core.gauss_newton import (
    GaussNewtonModel,
    gauss_newton_model,
    gauss_newton_vector_product,
    softmax_cross_entropy,
    squared_error,
)
from jaxctl.optim.hf import HessianFree, HFState, HFStats, hessian_free
from jaxctl.optim.hf_config import CGConfig, DampingConfig, LineSearchConfig
from jaxctl.core.jacobians import per_sample_grads, ravel_per_sample
from jaxctl.core.sharded import (
    sharded_fisher_operator,
    sharded_fisher_vector_product,
    sharded_natural_gradient,
    sharded_scores,
)
from jaxctl.util.mesh import data_mesh, replicate, shard_along
from jaxctl.control.planners import PlanResult, cem, mppi, random_shooting
from jaxctl.control.planning import jit_planner
from jaxctl.control.simulate import shift_actions
from jaxctl.models.dynamics import (
    DynamicsModel,
    NormStats,
    Transitions,
    dynamics_init,
    dynamics_predict,
    normalization_stats,
)
from jaxctl.models.dynamics_training import dynamics_evaluate, dynamics_train, open_loop_prediction
from jaxctl.models.mlp import mlp_apply, mlp_init
from jaxctl.models.particles import ParticlePlan, plan_with_particles
from jaxctl.models.policies import (
    Policy,
    ValueFunction,
    categorical_policy,
    gaussian_policy,
    rbf_gaussian_policy,
    value_function,
)
from jaxctl.models.rnn import RNNOutputs, RNNSpec, rnn_apply, rnn_init, rnn_spec
from jaxctl.optim.npg import NPGState, normalized_step, npg
from jaxctl.optim.trpo import TRPOInfo, trpo_step
from jaxctl.models.features import (
    FourierFeatures,
    RunningStats,
    fourier_apply,
    fourier_features,
    normalize_obs,
    running_stats_init,
    running_stats_update,
)
from jaxctl.control.rl import EpisodeStats, Trajectory, gae, score_gradient
from jaxctl.spiking import (
    LIF,
    LIFRate,
    RectifiedLinear,
    SimResult,
    SoftLIFRate,
    SpikingNetwork,
    SpikingRectifiedLinear,
    firing_rate_penalty,
    from_flax,
    lowpass,
    rate_apply,
    spiking_network,
)
from jaxctl.util.checkpoint import (
    CheckpointError,
    checkpoint_metadata,
    restore_checkpoint,
    save_checkpoint,
)

__all__ = [
    "CGConfig",
    "CGResult",
    "CheckpointError",
    "DampingConfig",
    "DynamicsModel",
    "EpisodeStats",
    "FourierFeatures",
    "GaussNewtonModel",
    "HFState",
    "HFStats",
    "HessianFree",
    "LIF",
    "LIFRate",
    "LineSearchConfig",
    "MartensCGResult",
    "NPGState",
    "NormStats",
    "ParticlePlan",
    "PlanResult",
    "Policy",
    "RNNOutputs",
    "RNNSpec",
    "RectifiedLinear",
    "RunningStats",
    "SimResult",
    "SoftLIFRate",
    "SpikingNetwork",
    "SpikingRectifiedLinear",
    "TRPOInfo",
    "Trajectory",
    "Transitions",
    "ValueFunction",
    "categorical_policy",
    "cem",
    "cg",
    "checkpoint_metadata",
    "clipped_inverse",
    "data_mesh",
    "dynamics_evaluate",
    "dynamics_init",
    "dynamics_predict",
    "dynamics_train",
    "firing_rate_penalty",
    "fisher_matrix",
    "fisher_operator",
    "fisher_vector_product",
    "fourier_apply",
    "fourier_features",
    "from_flax",
    "gae",
    "gauss_newton_model",
    "gauss_newton_vector_product",
    "gaussian_policy",
    "hessian_free",
    "jit_planner",
    "lowpass",
    "martens_cg",
    "mlp_apply",
    "mlp_init",
    "mppi",
    "natural_gradient",
    "normalization_stats",
    "normalize_obs",
    "normalized_step",
    "npg",
    "open_loop_prediction",
    "per_sample_grads",
    "plan_with_particles",
    "random_shooting",
    "rate_apply",
    "ravel_per_sample",
    "rbf_gaussian_policy",
    "replicate",
    "restore_checkpoint",
    "rnn_apply",
    "rnn_init",
    "rnn_spec",
    "running_stats_init",
    "running_stats_update",
    "save_checkpoint",
    "score_gradient",
    "shard_along",
    "sharded_fisher_operator",
    "sharded_fisher_vector_product",
    "sharded_natural_gradient",
    "sharded_scores",
    "shift_actions",
    "softmax_cross_entropy",
    "spiking_network",
    "squared_error",
    "trpo_step",
    "value_function",
]
