"""`jaxctl mpc`: model-based RL with a learned MLP dynamics model and jitted MPC.

The seed's loop (Nagabandi et al. 2018): collect random trajectories, fit
`f(s, a) -> s' - s`, run MPC episodes with the model (replanning every
step), add their transitions to the data set, retrain, repeat. Run on

* gymnax `Pendulum-v1` (all JAX: a whole MPC episode, planner inside, is one
  jitted `lax.scan`, vmapped over episodes): swing-up return per aggregation
  iteration against a random policy, and the three planners on the final model;
* gymnasium MuJoCo `HalfCheetah-v5` (and `Swimmer-v5`): the environment steps
  in Python, the planner is one jitted call per step. Forward return per
  aggregation iteration against random, the horizon sweep (seed Fig. 5), the
  open-loop prediction error (Fig. 6) and the initial-data-size study (Fig. 7).

Nothing recompiles across aggregation iterations: the data lives in a
fixed-capacity buffer (a traced `count` says how much is valid) and the
model is a traced argument of every jitted function.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxctl.control import planners as mpc
from jaxctl.apps import common as _common
from jaxctl.envs import mbrl_tasks
from jaxctl.models import dynamics as dyn

TRAIN_CHUNK = 50  # gradient steps per jitted training call (progress granularity)


@dataclasses.dataclass
class TaskConfig:
    """Sizes of one task's experiment (the defaults are the headline run)."""

    hidden: tuple[int, ...] = (500,)
    num_samples: int = 1000
    horizon: int = 20
    episode_steps: int = 1000
    random_episodes: int = 10
    iterations: int = 3
    mpc_episodes: int = 1
    epochs: int = 40
    retrain_epochs: int = 20
    batch_size: int = 512
    learning_rate: float = 1e-3
    noise_std: float = 0.01
    sweep_horizons: tuple[int, ...] = ()
    sweep_steps: int = 0
    data_sizes: tuple[int, ...] = ()
    data_iterations: int = 0
    data_steps: int = 0
    open_loop_steps: int = 100
    compare_steps: int = 0  # > 0: compare the three planners on the final model


def pendulum_config(quick: bool) -> TaskConfig:
    if quick:
        return TaskConfig(hidden=(64, 64), num_samples=128, horizon=15, episode_steps=200,
                          random_episodes=4, iterations=1, mpc_episodes=2, epochs=30,
                          retrain_epochs=20, batch_size=128, open_loop_steps=50)
    return TaskConfig(hidden=(128, 128), num_samples=500, horizon=25, episode_steps=200,
                      random_episodes=10, iterations=3, mpc_episodes=8, epochs=100,
                      retrain_epochs=60, batch_size=256, open_loop_steps=100)


def mujoco_config(env_name: str, quick: bool, args: argparse.Namespace) -> TaskConfig:
    if quick:
        return TaskConfig(hidden=(64,), num_samples=100, horizon=5, episode_steps=60,
                          random_episodes=2, iterations=1, epochs=5, retrain_epochs=5,
                          batch_size=128, sweep_horizons=(1, 5), sweep_steps=20,
                          data_sizes=(1, 2), data_iterations=1, data_steps=30,
                          open_loop_steps=30)
    if env_name == "HalfCheetah-v5":
        cfg = TaskConfig(num_samples=1000, horizon=20, episode_steps=1000, random_episodes=10,
                         iterations=3, epochs=40, retrain_epochs=20,
                         sweep_horizons=(1, 2, 5, 10, 20, 40), sweep_steps=300,
                         data_sizes=(1, 3, 10), data_iterations=3, data_steps=300,
                         compare_steps=300)
    else:  # Swimmer: a short check of the forward task, no sweeps
        cfg = TaskConfig(num_samples=1000, horizon=20, episode_steps=300, random_episodes=10,
                         iterations=2, epochs=40, retrain_epochs=20)
    if args.num_samples is not None:
        cfg.num_samples = args.num_samples
    if args.horizon is not None:
        cfg.horizon = args.horizon
    if args.iterations is not None:
        cfg.iterations = args.iterations
    return cfg


# ---------------------------------------------------------------------------
# Data buffer and model training (shared by both environment families).


class Buffer:
    """Fixed-capacity transition store (numpy); `data()` pads to capacity so jitted code never recompiles."""

    def __init__(self, capacity: int, n: int, m: int):
        self.states = np.zeros((capacity, n), np.float32)
        self.actions = np.zeros((capacity, m), np.float32)
        self.next_states = np.zeros((capacity, n), np.float32)
        self.count = 0

    def add(self, observations: np.ndarray, actions: np.ndarray) -> None:
        observations, actions = np.asarray(observations), np.asarray(actions)
        k = min(len(actions), len(self.states) - self.count)
        sl = slice(self.count, self.count + k)
        self.states[sl], self.actions[sl] = observations[:k], actions[:k]
        self.next_states[sl] = observations[1:k + 1]
        self.count += k

    def data(self) -> dyn.Transitions:
        return dyn.Transitions(jnp.asarray(self.states), jnp.asarray(self.actions),
                               jnp.asarray(self.next_states))


class Trainer:
    """Jitted model fitting on a `Buffer`: refreshes the statistics, then epochs of Adam steps."""

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg
        self.optimizer = optax.adam(cfg.learning_rate)
        self._stats = jax.jit(dyn.normalization_stats)
        self._init = jax.jit(lambda key, stats: dyn.dynamics_init(key, stats, cfg.hidden))
        self._steps = jax.jit(
            lambda model, opt_state, data, key, count: dyn.dynamics_train(
                model, opt_state, data, key, self.optimizer, num_steps=TRAIN_CHUNK,
                batch_size=cfg.batch_size, noise_std=cfg.noise_std, count=count))

    def init(self, key: jax.Array, buffer: Buffer) -> tuple[dyn.DynamicsModel, Any]:
        stats = self._stats(buffer.data(), buffer.count)
        model = self._init(key, stats)
        return model, self.optimizer.init(model.params)

    def fit(self, model, opt_state, buffer: Buffer, key, epochs: int, desc: str):
        data = buffer.data()
        model = dataclasses.replace(model, stats=self._stats(data, buffer.count))
        steps = max(1, epochs * buffer.count // self.cfg.batch_size)
        chunks = math.ceil(steps / TRAIN_CHUNK)
        bar = _common.Progress(chunks, desc)
        loss = float("nan")
        for i in range(chunks):
            model, opt_state, log = self._steps(model, opt_state, data,
                                                jax.random.fold_in(key, i), buffer.count)
            loss = float(log.losses[-1])
            bar.update(i + 1, loss=loss)
        bar.close()
        return model, opt_state, loss


def _planner_budget(name: str, num_samples: int) -> tuple[int, dict]:
    """Candidates per round and options: CEM refits 3 times with K/3 candidates each, so every
    planner evaluates about K sequences per step (a fair comparison at equal model cost)."""
    if name == "cem":
        return max(1, num_samples // 3), {"num_iterations": 3}
    return num_samples, {}


# ---------------------------------------------------------------------------
# Pendulum: everything in JAX.


def _held_upright(observations, last: int = 50, tol: float = 0.5) -> float:
    """Fraction of episodes whose angle stays within `tol` rad of upright for the last steps."""
    obs = np.asarray(observations)[:, -last:]
    theta = np.arctan2(obs[..., 1], obs[..., 0])
    return float(np.mean(np.all(np.abs(theta) < tol, axis=1)))


def _pendulum_experiment(cfg: TaskConfig, key: jax.Array, planners: tuple[str, ...]) -> dict:
    import gymnax

    env, env_params = gymnax.make("Pendulum-v1")
    low, high = -2.0 * jnp.ones(1), 2.0 * jnp.ones(1)
    T, H = cfg.episode_steps, cfg.horizon

    def random_policy(c, obs, k):
        return jax.random.uniform(k, (1,), minval=low, maxval=high), c

    run_random = jax.jit(jax.vmap(
        lambda k: mbrl_tasks.gymnax_episode(env, env_params, random_policy, None, k, T)[0]))

    def make_mpc_runner(name):
        num_samples, options = _planner_budget(name, cfg.num_samples)

        def run(model, k):
            plan = jax.tree_util.Partial(dyn.dynamics_predict, model)

            def policy(prev, obs, k):
                res = mpc.PLANNERS[name](plan, mbrl_tasks.pendulum_reward, obs, k,
                                         num_samples=num_samples, horizon=H,
                                         action_low=low, action_high=high,
                                         init_actions=prev, **options)
                return res.actions[0], mpc.shift_actions(res.actions, 0.0)

            return mbrl_tasks.gymnax_episode(env, env_params, policy, jnp.zeros((H, 1)), k, T)[0]

        return jax.jit(jax.vmap(run, in_axes=(None, 0)))

    keys = jax.random.split(key, 8)
    capacity = (cfg.random_episodes + cfg.iterations * cfg.mpc_episodes) * T
    buffer = Buffer(capacity, 3, 1)
    rand = run_random(jax.random.split(keys[0], max(cfg.random_episodes, 8)))
    random_returns = np.asarray(rand.rewards.sum(-1))
    for i in range(cfg.random_episodes):
        buffer.add(rand.observations[i], rand.actions[i])

    trainer = Trainer(cfg)
    model, opt_state = trainer.init(keys[1], buffer)
    model, opt_state, loss = trainer.fit(model, opt_state, buffer, keys[2], cfg.epochs,
                                         "pendulum: train on random data")
    runners = {planners[0]: make_mpc_runner(planners[0])}
    runner = runners[planners[0]]
    # The same start states (and planner keys) every iteration: the curve then shows the
    # model improving, not the luck of the draw. Those episodes are also the new data.
    eval_keys = jax.random.split(keys[3], cfg.mpc_episodes)
    returns, losses, held = [], [loss], []
    for it in range(cfg.iterations + 1):
        t0 = time.perf_counter()
        ep = runner(model, eval_keys)
        ret = np.asarray(ep.rewards.sum(-1))
        returns.append(ret)
        held.append(_held_upright(ep.observations))
        print(f"  pendulum iteration {it}: MPC return {ret.mean():.1f} +- {ret.std():.1f}, "
              f"upright over the last 50 steps in {held[-1]:.0%} of episodes "
              f"({time.perf_counter() - t0:.1f} s for {cfg.mpc_episodes} episodes)")
        if it == cfg.iterations:
            break
        for e in range(cfg.mpc_episodes):
            buffer.add(ep.observations[e], ep.actions[e])
        model, opt_state, loss = trainer.fit(model, opt_state, buffer,
                                             jax.random.fold_in(keys[4], it),
                                             cfg.retrain_epochs, f"pendulum: retrain {it + 1}")
        losses.append(loss)

    # The three planners on the final model, same start states.
    planner_returns = {}
    for name in planners:
        if name not in runners:
            runners[name] = make_mpc_runner(name)
        ep = runners[name](model, eval_keys)
        planner_returns[name] = float(ep.rewards.sum(-1).mean())

    held_out = run_random(jax.random.split(keys[6], 8))
    L = min(cfg.open_loop_steps, T)
    open_loop = jax.vmap(lambda o, a: dyn.open_loop_prediction(model, o[:L + 1], a[:L]).error)(
        held_out.observations, held_out.actions)
    return {
        "episode_steps": T,
        "random_return_mean": float(random_returns.mean()),
        "random_return_std": float(random_returns.std()),
        "mpc_return_per_iteration": [float(r.mean()) for r in returns],
        "mpc_return_std_per_iteration": [float(r.std()) for r in returns],
        "upright_fraction_per_iteration": held,
        "random_upright_fraction": _held_upright(rand.observations),
        "final_train_loss_per_iteration": losses,
        "planner_returns_final_model": planner_returns,
        "open_loop_error": np.asarray(open_loop.mean(0)).tolist(),
        "transitions": buffer.count,
    }


# ---------------------------------------------------------------------------
# gymnasium MuJoCo: env in Python, planner jitted.


def _make_actor(planner: str, cfg_horizon: int, num_samples: int, reward: Callable,
                low: jax.Array, high: jax.Array, warm_start: bool):
    """Jitted `act(model, obs, key, prev_plan) -> (action, next warm start, predicted return)`."""
    num_samples, options = _planner_budget(planner, num_samples)
    fill = (low + high) / 2

    def act(model, obs, key, prev):
        res = mpc.PLANNERS[planner](
            jax.tree_util.Partial(dyn.dynamics_predict, model), reward, obs, key,
            num_samples=num_samples, horizon=cfg_horizon, action_low=low, action_high=high,
            init_actions=prev if warm_start else None, **options)
        return res.actions[0], mpc.shift_actions(res.actions, fill), res.total_reward

    return jax.jit(act)


def _mpc_episode(env, act, model, key, steps: int, seed: int, m: int, horizon: int,
                 bar: _common.Progress | None = None, offset: int = 0):
    prev = [jnp.zeros((horizon, m), jnp.float32)]
    keys = np.asarray(jax.random.split(key, steps))

    def policy(t, obs):
        action, prev[0], _ = act(model, obs, keys[t], prev[0])
        if bar is not None and (t + 1) % 25 == 0:
            bar.update(offset + t + 1)
        return np.asarray(action)

    return mbrl_tasks.gymnasium_episode(env, policy, steps, seed)


def _forward_return(ep: mbrl_tasks.Episode) -> float:
    return float(np.sum(ep.rewards))


def _mujoco_experiment(env_name: str, cfg: TaskConfig, key: jax.Array, planner: str,
                       warm_start: bool, seed: int) -> dict:
    import gymnasium

    env = gymnasium.make(env_name)
    n, m = env.observation_space.shape[0], env.action_space.shape[0]
    low = jnp.asarray(env.action_space.low, jnp.float32)
    high = jnp.asarray(env.action_space.high, jnp.float32)
    task = mbrl_tasks.FORWARD_TASKS[env_name]
    reward = mbrl_tasks.forward_velocity_reward(task.velocity_index, task.ctrl_cost_weight)
    T = cfg.episode_steps
    short = env_name.split("-")[0].lower()
    keys = jax.random.split(key, 8)

    def random_episode(s, steps):
        rng = np.random.default_rng(s)
        return mbrl_tasks.gymnasium_episode(
            env, lambda t, o: rng.uniform(env.action_space.low, env.action_space.high), steps, s)

    largest_init = max((cfg.random_episodes, *cfg.data_sizes))
    capacity = largest_init * T + max(cfg.iterations, cfg.data_iterations) * T
    trainer = Trainer(cfg)

    # Random data: also the random-policy baseline.
    random_eps = [random_episode(seed + i, T) for i in range(largest_init)]
    random_returns = np.array([_forward_return(e) for e in random_eps[:cfg.random_episodes]])
    print(f"  {short}: random policy return over {T} steps {random_returns.mean():.1f} "
          f"+- {random_returns.std():.1f}")

    def aggregation_run(num_random: int, iterations: int, steps: int, k: jax.Array,
                        label: str, act, horizon: int, epochs: int):
        buffer = Buffer(capacity, n, m)
        for e in random_eps[:num_random]:
            buffer.add(e.observations, e.actions)
        ks = jax.random.split(k, 3)
        model, opt_state = trainer.init(ks[0], buffer)
        model, opt_state, _ = trainer.fit(model, opt_state, buffer, ks[1], epochs,
                                          f"{label}: train on {num_random} random rollouts")
        returns, seconds = [], []
        for it in range(iterations + 1):
            bar = _common.Progress(steps, f"{label}: MPC rollout {it}")
            t0 = time.perf_counter()
            ep = _mpc_episode(env, act, model, jax.random.fold_in(ks[2], it), steps,
                              seed + 1000 + it, m, horizon, bar)
            bar.close()
            seconds.append((time.perf_counter() - t0) / max(len(ep.actions), 1))
            returns.append(_forward_return(ep))
            print(f"  {label} iteration {it}: return {returns[-1]:.1f} over {len(ep.actions)} steps")
            if it == iterations:
                break
            buffer.add(ep.observations, ep.actions)
            model, opt_state, _ = trainer.fit(model, opt_state, buffer,
                                              jax.random.fold_in(ks[1], it + 1),
                                              cfg.retrain_epochs, f"{label}: retrain {it + 1}")
        return model, returns, seconds, buffer

    actors: dict[int, Callable] = {}

    def actor(h):
        if h not in actors:
            actors[h] = _make_actor(planner, h, cfg.num_samples, reward, low, high, warm_start)
        return actors[h]

    act = actor(cfg.horizon)
    t0 = time.perf_counter()
    model, returns, seconds, buffer = aggregation_run(
        cfg.random_episodes, cfg.iterations, T, keys[0], short, act, cfg.horizon, cfg.epochs)
    result: dict[str, Any] = {
        "episode_steps": T,
        "random_return_mean": float(random_returns.mean()),
        "random_return_std": float(random_returns.std()),
        "mpc_return_per_iteration": returns,
        "seconds_per_env_step": float(np.median(seconds)),
        "aggregation_seconds": time.perf_counter() - t0,
        "transitions": buffer.count,
    }

    # Fig. 6: open-loop prediction of the final model on a held-out random rollout.
    L = min(cfg.open_loop_steps, T)
    held = random_episode(seed + 10_000, L)
    pred = jax.jit(dyn.open_loop_prediction)(model, jnp.asarray(held.observations),
                                              jnp.asarray(held.actions))
    result["open_loop_error"] = np.asarray(pred.error).tolist()
    vi = task.velocity_index
    result["open_loop_velocity"] = {"true": np.asarray(pred.true[:, vi]).tolist(),
                                    "predicted": np.asarray(pred.predicted[:, vi]).tolist()}

    # Fig. 5: horizon sweep with the final model (same K), random return over the same length.
    if cfg.sweep_horizons:
        sweep = {}
        bar = _common.Progress(len(cfg.sweep_horizons) * cfg.sweep_steps, f"{short}: horizon sweep")
        for i, h in enumerate(cfg.sweep_horizons):
            ep = _mpc_episode(env, actor(h), model, jax.random.fold_in(keys[1], h),
                              cfg.sweep_steps, seed + 2000, m, h, bar, i * cfg.sweep_steps)
            sweep[str(h)] = _forward_return(ep)
        bar.close()
        result["horizon_sweep"] = {"steps": cfg.sweep_steps, "returns": sweep,
                                   "random_return": float(np.mean([
                                       np.sum(e.rewards[:cfg.sweep_steps]) for e in random_eps]))}

    # The three planners on the final model (CEM: K/3 candidates x 3 refits; CEM and
    # MPPI warm-started from the shifted previous plan), same start state.
    if cfg.compare_steps:
        compare = {}
        for name in sorted(mpc.PLANNERS):
            act_p = _make_actor(name, cfg.horizon, cfg.num_samples, reward, low, high,
                                name != "random_shooting")
            ep = _mpc_episode(env, act_p, model, keys[3], cfg.compare_steps, seed + 3000, m,
                              cfg.horizon)
            compare[name] = _forward_return(ep)
            print(f"  {short} final model, {name}: return {compare[name]:.1f} over "
                  f"{cfg.compare_steps} steps")
        result["planner_returns_final_model"] = {"steps": cfg.compare_steps, "returns": compare}

    # Fig. 7: initial random data size vs aggregation.
    if cfg.data_sizes:
        study = {}
        for d in cfg.data_sizes:
            _, rets, _, _ = aggregation_run(d, cfg.data_iterations, cfg.data_steps,
                                            jax.random.fold_in(keys[2], d),
                                            f"{short} data={d}", act, cfg.horizon,
                                            cfg.epochs)
            study[str(d)] = rets
        result["data_size_study"] = {"steps": cfg.data_steps, "random_rollout_steps": T,
                                     "returns": study, "random_return": float(np.mean([
                                         np.sum(e.rewards[:cfg.data_steps]) for e in random_eps]))}
    env.close()
    return result


# ---------------------------------------------------------------------------
# Plots, table, command.


def _plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    # Top row: return per aggregation iteration, one panel per task (scales differ).
    tasks = [name for name, res in results.items() if "mpc_return_per_iteration" in res]
    for ax, name in zip(axes[0], tasks):
        res = results[name]
        r = np.asarray(res["mpc_return_per_iteration"])
        ax.plot(np.arange(len(r)), r, "o-", label="MPC, learned model")
        ax.axhline(res["random_return_mean"], color="gray", ls="--", label="random policy")
        steps = res.get("episode_steps", 200)
        ax.set(xlabel="aggregation iteration", ylabel=f"return ({steps} steps)",
               title=f"{name}: return per aggregation iteration")
        ax.legend(fontsize=7)
    for ax in axes[0][len(tasks):]:
        ax.axis("off")

    cheetah = results.get("HalfCheetah-v5", {})
    ax = axes[1, 0]
    if "horizon_sweep" in cheetah:
        hs = cheetah["horizon_sweep"]
        h = sorted(int(k) for k in hs["returns"])
        ax.plot(h, [hs["returns"][str(k)] for k in h], "o-", label="MPC, final model")
        ax.axhline(hs["random_return"], color="gray", ls="--", label="random")
        ax.set_xscale("log")
        ax.set(title=f"HalfCheetah horizon sweep ({hs['steps']} steps)", xlabel="horizon H",
               ylabel="forward return")
        ax.legend(fontsize=7)

    ax = axes[1, 1]
    if "data_size_study" in cheetah:
        ds = cheetah["data_size_study"]
        for d, rets in ds["returns"].items():
            ax.plot(np.arange(len(rets)), rets, "o-", label=f"{d} random rollouts")
        ax.axhline(ds["random_return"], color="gray", ls="--", label="random policy")
        ax.set(title=f"HalfCheetah initial data vs aggregation ({ds['steps']}-step rollouts)",
               xlabel="aggregation iteration", ylabel="forward return")
        ax.legend(fontsize=7)

    ax = axes[1, 2]
    for name, res in results.items():
        if "open_loop_error" in res:
            ax.semilogy(res["open_loop_error"], label=name)
    ax.set(title="Open-loop prediction error (z-scored RMS)", xlabel="steps ahead",
           ylabel="error")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `jaxctl mpc`."""
    parser.add_argument("--tasks", default=None,
                        help="comma-separated subset of pendulum, halfcheetah, swimmer "
                             "(default: all three; with --quick: pendulum,halfcheetah)")
    parser.add_argument("--planner", default="random_shooting", choices=sorted(mpc.PLANNERS),
                        help="planner for the MuJoCo tasks (Pendulum also compares all three; "
                             "CEM runs 3 refits of K/3 candidates)")
    parser.add_argument("--warm-start", default="auto", choices=("auto", "on", "off"),
                        help="warm-start from the shifted previous plan on MuJoCo "
                             "(auto: off for random shooting as in the seed, on otherwise)")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="K for the MuJoCo tasks (default 1000, the seed's half-cheetah setting)")
    parser.add_argument("--horizon", type=int, default=None,
                        help="H for the MuJoCo tasks (default 20, the seed's half-cheetah setting)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="data-aggregation iterations on the MuJoCo tasks (default 3 / 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed for keys and env resets")


TASK_NAMES = {"pendulum": "Pendulum-v1", "halfcheetah": "HalfCheetah-v5", "swimmer": "Swimmer-v5"}


def run(args: argparse.Namespace, out_dir: str) -> dict:
    """Runs the experiments of `jaxctl mpc`; returns the figures for results.json."""
    spec = args.tasks or ("pendulum,halfcheetah" if args.quick else "pendulum,halfcheetah,swimmer")
    tasks = [t.strip().lower() for t in spec.split(",") if t.strip()]
    unknown = set(tasks) - set(TASK_NAMES)
    if unknown:
        raise ValueError(f"--tasks: unknown {sorted(unknown)}; choose from {sorted(TASK_NAMES)}")
    warm = {"on": True, "off": False}.get(args.warm_start, args.planner != "random_shooting")
    key = jax.random.PRNGKey(args.seed)
    results: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    start = time.perf_counter()
    for i, t in enumerate(tasks):
        name = TASK_NAMES[t]
        k = jax.random.fold_in(key, i)
        t0 = time.perf_counter()
        if t == "pendulum":
            cfg = pendulum_config(args.quick)
            print(f"{name}: K={cfg.num_samples} H={cfg.horizon}, MLP {cfg.hidden}")
            # --quick compares only the main planner (each planner is one more compile).
            planners = ("random_shooting",) if args.quick else ("random_shooting", "cem", "mppi")
            results[name] = _pendulum_experiment(cfg, k, planners)
        else:
            cfg = mujoco_config(name, args.quick, args)
            print(f"{name}: {args.planner} K={cfg.num_samples} H={cfg.horizon}, MLP {cfg.hidden}, "
                  f"warm start {warm}")
            results[name] = _mujoco_experiment(name, cfg, k, args.planner, warm, args.seed)
        results[name]["seconds"] = time.perf_counter() - t0
        settings[name] = dataclasses.asdict(cfg)

    rows = []
    for name, res in results.items():
        r = res["mpc_return_per_iteration"]
        rows.append([name, f"{res['random_return_mean']:.1f} ± {res['random_return_std']:.1f}",
                     f"{r[0]:.1f}", f"{r[-1]:.1f}", len(r) - 1, res["transitions"],
                     f"{res['seconds']:.0f}"])
    table = _common.markdown_table(
        ["task", "random return", "MPC after random data", "MPC after aggregation",
         "iterations", "transitions", "seconds"], rows)
    print("\n" + table)
    if "Pendulum-v1" in results:
        print("\nPendulum planners on the final model: " + ", ".join(
            f"{k} {v:.1f}" for k, v in results["Pendulum-v1"]["planner_returns_final_model"].items()))
    hs = results.get("HalfCheetah-v5", {}).get("horizon_sweep")
    if hs:
        print("\n" + _common.markdown_table(["H"] + list(hs["returns"]),
                                            [["HalfCheetah return"] + list(hs["returns"].values())]))
    png = os.path.join(out_dir, "mpc.png")
    _plot(results, png)
    print(f"plot: {png}")
    return {"tasks": results, "task_settings": settings, "planner": args.planner,
            "warm_start": warm, "table": table, "total_seconds": time.perf_counter() - start,
            "plot": "mpc.png"}
