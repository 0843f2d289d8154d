"""Layer 2, optimizers: the normalized natural-gradient step (optax) and Hessian-free."""
from jaxctl.optim import hf, npg  # noqa: F401
