"""Multi-device checks of the sharding layer, run by tests/test_sharding.py in a subprocess.

`XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharding_checks.py
GROUP...` runs the named groups (curvature, planners, hf, sessions) on 8 fake
CPU devices and prints one JSON object of measurements; the test asserts on
them, so jax is imported and the functions compiled once for all checks.
Each sharded result is compared with the same computation on one device.
"""

from __future__ import annotations

import functools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxctl.control.planners import PLANNERS
from jaxctl.control.planning import jit_planner
from jaxctl.core.fisher import fisher_operator, fisher_vector_product, natural_gradient
from jaxctl.core.jacobians import per_sample_grads, ravel_per_sample
from jaxctl.core.sharded import (
    sharded_fisher_operator,
    sharded_fisher_vector_product,
    sharded_natural_gradient,
    sharded_scores,
)
import jaxctl.experiments.npg_sessions as agent
from jaxctl.core.gauss_newton import gauss_newton_model
from jaxctl.experiments.reach_model import (
    ReachSettings,
    batch_loss,
    build,
    closed_loop_batch,
    init_params,
)
from jaxctl.experiments.reach_train import ReachTrainer
from jaxctl.optim.npg import npg
from jaxctl.util.mesh import data_mesh, hlo_collectives, shard_along

from jax.sharding import AxisType, PartitionSpec


def log_prob(w, obs, action):
    return jax.nn.log_softmax(obs @ w)[action]


def policy_batch(T, n_obs=8, n_act=4, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    w = 0.3 * jax.random.normal(k1, (n_obs, n_act))
    obs = jax.random.normal(k2, (T, n_obs))
    actions = jax.random.randint(k3, (T,), 0, n_act)
    return w, obs, actions


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def per_device_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


def check_curvature(n: int) -> dict:
    mesh = data_mesh(n)
    T = 512                      # T / N = 64 >= P = 32 rows per device for TSQR
    w, obs, actions = policy_batch(T)
    adv = jnp.linspace(-1.0, 1.0, T)
    G1, _ = ravel_per_sample(per_sample_grads(log_prob, w, obs, actions))
    g = G1.T @ adv / T
    v = jnp.cos(jnp.arange(G1.shape[1], dtype=jnp.float32))
    obs_s, act_s = shard_along((obs, actions), mesh)

    scores = jax.jit(lambda w, o, a: sharded_scores(log_prob, w, o, a, mesh=mesh))
    Gs = scores(w, obs_s, act_s)
    fvp = jax.jit(lambda G, v: sharded_fisher_vector_product(G, v, mesh=mesh, damping=0.1))
    op = jax.jit(lambda w, o, a, v: sharded_fisher_operator(log_prob, w, o, a, mesh=mesh)(v))
    ng = {m: jax.jit(lambda G, g, m=m: sharded_natural_gradient(
        G, g, mesh=mesh, method=m, damping=0.1 if m == "cg" else 0.0,
        rel_damping=0.0 if m == "cg" else 1e-3)) for m in ("cg", "tsqr")}
    ref_cg = natural_gradient(G1, g, method="cg", damping=0.1)
    ref_svd = natural_gradient(G1, g, method="svd", rel_damping=1e-3)

    # The whole CG route, scores to natural gradient, compiled in one program.
    def pipeline(w, o, a, g):
        return sharded_natural_gradient(sharded_scores(log_prob, w, o, a, mesh=mesh), g,
                                        mesh=mesh, method="cg", damping=0.1)

    hlo_cg = jax.jit(pipeline).lower(w, obs_s, act_s, g).compile().as_text()
    hlo_tsqr = ng["tsqr"].lower(Gs, g).compile().as_text()

    # Memory per device: scores of many samples and one Fisher-vector product.
    T_big = 8192
    wb, ob, ab = policy_batch(T_big, seed=1)
    ob_s, ab_s = shard_along((ob, ab), mesh)
    mem = jax.jit(lambda w, o, a, v: sharded_fisher_vector_product(
        sharded_scores(log_prob, w, o, a, mesh=mesh), v, mesh=mesh))
    # The NPG transformation on sharded scores (TSQR) against its one-device SVD.
    grads = -g.reshape(w.shape)
    npg_err = {}
    for fisher, kw in (("dense", dict(rel_damping=1e-3)), ("cg", dict(damping=0.1))):
        opts = dict(fisher=fisher, **kw)
        ref_u, _ = npg(0.01, **opts).update(grads, npg(0.01, **opts).init(w), w, scores=G1)
        opt = npg(0.01, mesh=mesh, **opts)
        got_u, _ = jax.jit(lambda gr, G: opt.update(gr, opt.init(w), w, scores=G))(grads, Gs)
        npg_err[fisher] = rel_err(got_u, ref_u)
    return {
        "npg_err": npg_err,
        "T": T, "P": int(G1.shape[1]), "n": n,
        "scores_err": rel_err(Gs, G1),
        "scores_sharded": Gs.sharding.spec == PartitionSpec("data"),
        "scores_local_rows": int(Gs.addressable_shards[0].data.shape[0]),
        "fvp_err": rel_err(fvp(Gs, v), fisher_vector_product(G1, v, damping=0.1)),
        "operator_err": rel_err(op(w, obs_s, act_s, v.reshape(w.shape)),
                                fisher_operator(log_prob, w, obs, actions)(v.reshape(w.shape))),
        "ng_cg_err": rel_err(ng["cg"](Gs, g), ref_cg),
        "ng_tsqr_err": rel_err(ng["tsqr"](Gs, g), ref_svd),
        "hlo_cg": hlo_collectives(hlo_cg),
        "hlo_tsqr": hlo_collectives(hlo_tsqr),
        "memory_bytes": per_device_bytes(mem.lower(wb, ob_s, ab_s, v).compile()),
    }


def plan_problem():
    def dynamics(x, u):
        return x + 0.1 * jnp.tanh(u) + 0.05 * jnp.sin(x[::-1])

    def reward(x, u, y):
        return -(y @ y) - 0.01 * (u @ u)

    return dynamics, reward, jnp.array([1.0, -0.5]), dict(
        num_samples=64, horizon=6, action_low=-jnp.ones(2), action_high=jnp.ones(2))


def check_planners(n: int) -> dict:
    dynamics, reward, x0, cfg = plan_problem()
    key = jax.random.PRNGKey(3)
    meshes = {"auto": data_mesh(n),
              "explicit": jax.make_mesh((n,), ("data",), axis_types=(AxisType.Explicit,))}
    out = {}
    for name, planner in PLANNERS.items():
        opts = dict(num_iterations=3) if name != "random_shooting" else {}
        one = jax.jit(functools.partial(planner, dynamics, reward, **cfg, **opts))(x0, key)
        for kind, mesh in meshes.items():
            res = jax.jit(functools.partial(planner, dynamics, reward, **cfg, **opts,
                                            mesh=mesh))(x0, key)
            out[f"{name}_{kind}_err"] = rel_err(res.actions, one.actions)
            out[f"{name}_{kind}_reward_err"] = rel_err(res.total_reward, one.total_reward)
        # The MPC aggregation loop vmaps the planner over its parallel environments.
        states = jnp.stack([x0, -x0, 0.5 * x0, x0[::-1]])
        keys = jax.random.split(key, 4)
        f = functools.partial(planner, dynamics, reward, **cfg, **opts)
        vm_one = jax.jit(jax.vmap(f))(states, keys)
        vm = jax.jit(jax.vmap(functools.partial(f, mesh=meshes["auto"])))(states, keys)
        out[f"{name}_vmap_err"] = rel_err(vm.actions, vm_one.actions)
    mesh = meshes["auto"]
    plan = jit_planner("cem", num_iterations=3, mesh=mesh, **{k: cfg[k] for k in
                                                               ("num_samples", "horizon")})
    hlo = plan.jitted.lower(jax.tree_util.Partial(dynamics), jax.tree_util.Partial(reward), x0,
                            key, action_low=cfg["action_low"],
                            action_high=cfg["action_high"]).compile().as_text()
    out["cem_hlo"] = hlo_collectives(hlo)
    return out


def check_hf(n: int) -> dict:
    """`jaxctl reach`'s trainer, 8 targets split over the devices, against one device."""
    s = ReachSettings(hidden=8, steps=10, targets=8, cg_maxiter=20, alpha=1e-6)
    out, runs = {}, {}
    for name, mesh in (("one", None), ("mesh", data_mesh(n))):
        tr = ReachTrainer(s, mesh)
        runs[name] = tr.run(tr.initial_state(), 1, eval_every=0)
        if mesh is not None:
            out["hlo"] = hlo_collectives(tr._step.as_text())
            out["params_replicated"] = all(leaf.sharding.is_fully_replicated for leaf in
                                           jax.tree.leaves(runs[name].params))
    one, sharded = runs["one"], runs["mesh"]
    # One HF step (gradient, 20 CG steps on Gauss-Newton products, line search).
    out["loss_err"] = rel_err(sharded.history["loss"], one.history["loss"])
    out["new_loss_err"] = rel_err(sharded.history["new_loss"], one.history["new_loss"])
    out["params_err"] = max(rel_err(a, b) for a, b in zip(jax.tree.leaves(sharded.params),
                                                          jax.tree.leaves(one.params)))
    out["param_shapes"] = sorted({str(list(x.shape)) for x in jax.tree.leaves(one.params)})
    # The pieces of the step at the initial weights: loss, gradient, Gauss-Newton product.
    exp, key = build(s), jax.random.PRNGKey(s.seed)
    params = init_params(jax.random.fold_in(key, 2**31 - 1), s)

    def pieces(p, mesh):
        batch = exp.make_batch(key, 0)
        if mesh is not None:
            batch = shard_along(batch, mesh)
        gn = gauss_newton_model(lambda q: closed_loop_batch(q, s, batch),
                                lambda o: batch_loss(o, batch, s), p)
        return gn.value, gn.grad, gn.matvec(jax.tree.map(jnp.ones_like, p))

    ref = jax.jit(lambda p: pieces(p, None))(params)
    got = jax.jit(lambda p: pieces(p, data_mesh(n)))(params)
    out["gn_pieces_err"] = max(rel_err(a, b) for a, b in zip(jax.tree.leaves(got),
                                                             jax.tree.leaves(ref)))
    return out


def check_sessions(n: int) -> dict:
    """NPG sessions (dense Fisher) split over the devices against one device."""
    cfg = agent.NPGSettings(delta=0.002, rel_damping=0.01, bootstrap=True, num_steps=50)
    keys = agent.session_keys(0, n)
    logs, states = {}, {}
    for name, mesh in (("one", None), ("mesh", data_mesh(n))):
        tr = agent.SessionTrainer(cfg, 2, mesh)
        states[name], log = tr.run(tr.initial_state(keys), 4)
        logs[name] = log["metrics"]
    return {
        "return_err": rel_err(logs["mesh"].mean_return, logs["one"].mean_return),
        "step_size_err": rel_err(logs["mesh"].step_size, logs["one"].step_size),
        "policy_sharded": all(leaf.sharding.spec == PartitionSpec("data") for leaf in
                              jax.tree.leaves(states["mesh"].policy)),
        "batch": [int(b) for b in np.asarray(states["mesh"].batch)],
    }


def check_mpc(n: int) -> dict:
    """Pendulum's MPC episodes (gymnax, planner inside) split over the devices."""
    import gymnax

    from jaxctl.experiments.mbrl import MBRLSettings
    from jaxctl.experiments.mbrl_pendulum import mpc_runner
    from jaxctl.models.dynamics import Transitions, dynamics_init, normalization_stats

    cfg = MBRLSettings(hidden=(16,), num_samples=32, horizon=4, episode_steps=6,
                       mpc_episodes=n)
    env, env_params = gymnax.make("Pendulum-v1")
    k = jax.random.split(jax.random.PRNGKey(5), 4)
    data = Transitions(jax.random.normal(k[0], (64, 3)), jax.random.normal(k[1], (64, 1)),
                       jax.random.normal(k[2], (64, 3)))
    model = dynamics_init(k[3], normalization_stats(data), (16,))
    keys = jax.random.split(jax.random.PRNGKey(6), n)
    one = mpc_runner(cfg, "cem", env, env_params)(model, keys)
    mesh = data_mesh(n)
    sharded = mpc_runner(cfg, "cem", env, env_params, mesh)(model, keys)
    return {"rewards_err": rel_err(sharded.rewards, one.rewards),
            "actions_err": rel_err(sharded.actions, one.actions),
            "rewards_sharded": sharded.rewards.sharding.spec[0] == "data",
            "rewards_nonzero": bool(jnp.all(one.rewards != 0))}


GROUPS = {"curvature": check_curvature, "planners": check_planners, "hf": check_hf,
          "sessions": check_sessions, "mpc": check_mpc}


def main(argv):
    n = len(jax.devices())
    out = {"devices": n, "jax": jax.__version__}
    for name in argv or list(GROUPS):
        out[name] = GROUPS[name](n)
        if name == "curvature":  # the 1-device baseline of the memory figure
            out["curvature_memory_1"] = check_memory_one()
    print(json.dumps(out))


def check_memory_one() -> int:
    mesh = data_mesh(1)
    wb, ob, ab = policy_batch(8192, seed=1)
    v = jnp.cos(jnp.arange(wb.size, dtype=jnp.float32))
    mem = jax.jit(lambda w, o, a, v: sharded_fisher_vector_product(
        sharded_scores(log_prob, w, o, a, mesh=mesh), v, mesh=mesh))
    return per_device_bytes(mem.lower(wb, ob, ab, v).compile())


if __name__ == "__main__":
    main(sys.argv[1:])
