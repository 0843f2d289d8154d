"""Layer 2, control: environment rollouts and returns (GAE), model rollouts and MPC planners."""
from jaxctl.control import planners, rl  # noqa: F401
