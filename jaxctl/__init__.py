"""jaxctl: second-order policy optimization and model-based control in JAX."""

__version__ = "0.1.0"

from jaxctl.nets.mlp import mlp_apply, mlp_init

__all__ = [
    "mlp_apply",
    "mlp_init",
]
