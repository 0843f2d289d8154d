"""Model-based RL on gymnax Pendulum-v1, all in JAX (Nagabandi et al. 2018).

A whole MPC episode, planner inside, is one jitted `lax.scan`, vmapped over
episodes: swing-up return per aggregation iteration against a random
policy, and the three planners on the final model.

References:
  A. Nagabandi, G. Kahn, R. Fearing, S. Levine (2018), "Neural network
  dynamics for model-based deep reinforcement learning with model-free
  fine-tuning", ICRA.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxctl.control.planners as mpc
import jaxctl.control.simulate as _sim
import jaxctl.envs.mbrl_tasks as mbrl_tasks
from jaxctl.experiments.mbrl import Buffer, MBRLSettings, ModelTrainer, fit, held_upright, \
    planner_budget
import jaxctl.models.dynamics as dyn
import jaxctl.models.dynamics_training as dyn_train
from jaxctl.util.mesh import check_divisible, replicate, shard_along


LOW, HIGH = -2.0, 2.0  # Pendulum-v1's torque limits


def mpc_runner(cfg: MBRLSettings, name: str, env, env_params, mesh=None, axis: str = "data"):
    """`run(model, keys) -> Episode`: one MPC episode per key with planner `name`, vmapped.

    With a `mesh`, the episodes (keys) are split over its axis `axis` and the
    model is replicated: each device plans and steps its own environments
    (the candidates of one plan stay on one device).
    """
    num_samples, options = planner_budget(name, cfg.num_samples)
    low, high = LOW * jnp.ones(1), HIGH * jnp.ones(1)
    T, H = cfg.episode_steps, cfg.horizon

    def run(model, k):
        plan = jax.tree_util.Partial(dyn.dynamics_predict, model)

        def policy(prev, obs, k):
            res = mpc.PLANNERS[name](plan, mbrl_tasks.pendulum_reward, obs, k,
                                     num_samples=num_samples, horizon=H,
                                     action_low=low, action_high=high,
                                     init_actions=prev, **options)
            return res.actions[0], _sim.shift_actions(res.actions, 0.0)

        return mbrl_tasks.gymnax_episode(env, env_params, policy, jnp.zeros((H, 1)), k, T)[0]

    runner = jax.jit(jax.vmap(run, in_axes=(None, 0)))
    if mesh is None:
        return runner

    def sharded(model, keys):
        check_divisible("episodes", keys.shape[0], mesh, axis)
        return runner(replicate(model, mesh), shard_along(keys, mesh, axis))

    return sharded


def pendulum_experiment(cfg: MBRLSettings, key: jax.Array, planners: tuple[str, ...],
                        mesh=None) -> dict:
    """Random data, a model fit, `cfg.iterations` rounds of MPC episodes + refits with
    `planners[0]`, then every planner on the final model; returns the figures.
    With a `mesh`, the `cfg.mpc_episodes` episodes are split over its devices."""
    import gymnax

    env, env_params = gymnax.make("Pendulum-v1")
    low, high = LOW * jnp.ones(1), HIGH * jnp.ones(1)
    T = cfg.episode_steps

    def random_policy(c, obs, k):
        return jax.random.uniform(k, (1,), minval=low, maxval=high), c

    run_random = jax.jit(jax.vmap(
        lambda k: mbrl_tasks.gymnax_episode(env, env_params, random_policy, None, k, T)[0]))

    def make_mpc_runner(name):
        return mpc_runner(cfg, name, env, env_params, mesh)

    keys = jax.random.split(key, 8)
    capacity = (cfg.random_episodes + cfg.iterations * cfg.mpc_episodes) * T
    buffer = Buffer(capacity, 3, 1)
    rand = run_random(jax.random.split(keys[0], max(cfg.random_episodes, 8)))
    random_returns = np.asarray(rand.rewards.sum(-1))
    for i in range(cfg.random_episodes):
        buffer.add(rand.observations[i], rand.actions[i])

    trainer = ModelTrainer(cfg)
    state, loss = fit(trainer, trainer.initial_state(keys[1], buffer), buffer, keys[2],
                      cfg.epochs, "pendulum: train on random data")
    runners = {planners[0]: make_mpc_runner(planners[0])}
    runner = runners[planners[0]]
    # The same start states (and planner keys) every iteration: the curve then shows the
    # model improving, not the luck of the draw. Those episodes are also the new data.
    eval_keys = jax.random.split(keys[3], cfg.mpc_episodes)
    returns, losses, held = [], [loss], []
    for it in range(cfg.iterations + 1):
        t0 = time.perf_counter()
        ep = runner(state.model, eval_keys)
        ret = np.asarray(ep.rewards.sum(-1))
        returns.append(ret)
        held.append(held_upright(ep.observations))
        print(f"  pendulum iteration {it}: MPC return {ret.mean():.1f} +- {ret.std():.1f}, "
              f"upright over the last 50 steps in {held[-1]:.0%} of episodes "
              f"({time.perf_counter() - t0:.1f} s for {cfg.mpc_episodes} episodes)")
        if it == cfg.iterations:
            break
        for e in range(cfg.mpc_episodes):
            buffer.add(ep.observations[e], ep.actions[e])
        state, loss = fit(trainer, state, buffer, jax.random.fold_in(keys[4], it),
                          cfg.retrain_epochs, f"pendulum: retrain {it + 1}")
        losses.append(loss)

    # The three planners on the final model, same start states.
    planner_returns = {}
    for name in planners:
        if name not in runners:
            runners[name] = make_mpc_runner(name)
        ep = runners[name](state.model, eval_keys)
        planner_returns[name] = float(ep.rewards.sum(-1).mean())

    held_out = run_random(jax.random.split(keys[6], 8))
    L = min(cfg.open_loop_steps, T)
    open_loop = jax.vmap(lambda o, a: dyn_train.open_loop_prediction(
        state.model, o[:L + 1], a[:L]).error)(held_out.observations, held_out.actions)
    return {
        "episode_steps": T,
        "random_return_mean": float(random_returns.mean()),
        "random_return_std": float(random_returns.std()),
        "mpc_return_per_iteration": [float(r.mean()) for r in returns],
        "mpc_return_std_per_iteration": [float(r.std()) for r in returns],
        "upright_fraction_per_iteration": held,
        "random_upright_fraction": held_upright(rand.observations),
        "final_train_loss_per_iteration": losses,
        "planner_returns_final_model": planner_returns,
        "open_loop_error": np.asarray(open_loop.mean(0)).tolist(),
        "transitions": buffer.count,
    }

