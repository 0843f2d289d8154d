"""Layer 2, optimizers: the normalized natural-gradient step (optax) and Hessian-free."""
from jaxctl.optim import hf, hf_config, hf_search, npg  # noqa: F401
