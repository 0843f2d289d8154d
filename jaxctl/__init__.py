"""jaxctl: second-order policy optimization and model-based control in JAX."""

__version__ = "0.1.0"

from jaxctl.cg import CGResult, cg
from jaxctl.fisher import (
    clipped_inverse,
    fisher_matrix,
    fisher_operator,
    fisher_vector_product,
    natural_gradient,
)
from jaxctl.jacobians import per_sample_grads, ravel_per_sample
from jaxctl.nets.mlp import mlp_apply, mlp_init
from jaxctl.npg import normalized_step

__all__ = [
    "CGResult",
    "cg",
    "clipped_inverse",
    "fisher_matrix",
    "fisher_operator",
    "fisher_vector_product",
    "mlp_apply",
    "mlp_init",
    "natural_gradient",
    "normalized_step",
    "per_sample_grads",
    "ravel_per_sample",
]
