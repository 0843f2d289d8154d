"""One process of tests/test_distributed.py: a 4-device mesh, curvature and a planner.

`python tests/distributed_worker.py single` runs on 4 fake CPU devices of one
process; `python tests/distributed_worker.py PORT ID` is process ID of 2
(2 fake CPU devices each, `jaxctl.apps.launch.initialize`, gloo collectives).
Both print one JSON line of results (every process holds them replicated).
"""

from __future__ import annotations

import functools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxctl.apps.launch import initialize
from jaxctl.control.planners import cem
from jaxctl.core.sharded import sharded_natural_gradient, sharded_scores
from jaxctl.util.mesh import data_mesh, shard_along


def start(argv):
    """The devices of this process (importing jax creates none; the first use does)."""
    if argv[1] == "single":
        jax.config.update("jax_num_cpu_devices", 4)
    else:
        initialize(f"localhost:{argv[1]}", 2, int(argv[2]), cpu_devices=2)


def log_prob(w, obs, action):
    return jax.nn.log_softmax(obs @ w)[action]


def main():
    mesh = data_mesh()
    T = 256

    @jax.jit
    def natural(key):
        # Samples are made inside the program and placed on the mesh, so no
        # process ever needs the others' data.
        k1, k2, k3 = jax.random.split(key, 3)
        w = 0.3 * jax.random.normal(k1, (8, 4))
        obs, actions = shard_along((jax.random.normal(k2, (T, 8)),
                                    jax.random.randint(k3, (T,), 0, 4)), mesh)
        G = sharded_scores(log_prob, w, obs, actions, mesh=mesh)
        g = jnp.matmul(jnp.linspace(-1.0, 1.0, T), G) / T
        return {m: sharded_natural_gradient(G, g, mesh=mesh, method=m, damping=0.1)
                for m in ("cg", "tsqr")}

    plan = jax.jit(functools.partial(
        cem, lambda x, u: x + 0.1 * jnp.tanh(u), lambda x, u, y: -(y @ y), num_samples=64,
        horizon=5, action_low=-jnp.ones(2), action_high=jnp.ones(2), mesh=mesh))
    out = {name: np.asarray(x.addressable_data(0)).tolist()
           for name, x in natural(jax.random.PRNGKey(0)).items()}
    out["cem"] = np.asarray(plan(jnp.array([1.0, -0.5]), jax.random.PRNGKey(1))
                            .actions.addressable_data(0)).tolist()
    out["devices"], out["processes"] = len(jax.devices()), jax.process_count()
    print(json.dumps(out))


if __name__ == "__main__":
    start(sys.argv)
    main()
