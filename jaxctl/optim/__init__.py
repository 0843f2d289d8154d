"""Layer 2, optimizers: the normalized natural-gradient step (optax), TRPO's line search, Hessian-free."""
from jaxctl.optim import hf, hf_config, hf_search, npg, trpo  # noqa: F401
