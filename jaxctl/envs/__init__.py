"""Layer 3, environments: the arm plants, the reach task, gymnax / gymnasium adapters and task rewards."""

# `arm_env` needs gymnax (the `examples` extra) and is imported on its own.
from jaxctl.envs import (  # noqa: F401
    arm, closed_loop, gymnax_gymnasium, mbrl_tasks, planar_arm, reach_task)
