"""Layer 2, control: environment rollouts and returns (GAE), model rollouts and MPC planners."""
from jaxctl.control import candidates, planners, rl, simulate  # noqa: F401
