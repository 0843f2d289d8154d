"""Layer 0: argument checks, pytree predicates and checkpoints (import nothing of jaxctl)."""
from jaxctl.util import checkpoint, checks, versions  # noqa: F401
