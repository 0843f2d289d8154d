"""A spiking controller closes the loop: a ReLU policy trained by NPG runs CartPole as spikes.

The conversion of DeWolf (2020) applied to a controller: a ReLU softmax
policy is trained with natural policy gradient on gymnax CartPole-v1
(`npg_sessions`, DeWolf 2018; Rajeswaran et al. 2017), then run as
integrate-and-fire ReLU neurons (`jaxctl.spiking`) step by step with the
environment.

Notation: the environment advances by `env_dt` (CartPole's `tau = 0.02` s)
per step `t`; the network by `dt` (1 ms). Each environment step holds the
observation `o_t` for `k = env_dt / dt` network steps (20) and carries the
network state (voltages, synapses) on to the next environment step; no
reset between steps, only at the episode start. The action is

    a_t = argmax_j (1/k) sum_{n=1..k} y_j[n],

the read-out `y = W_2 r + b_2` averaged over the `k` steps of `t`. Without
a synapse on the read-out connection the average is `W_2 c_t / (k dt s) +
b_2`, with `c_t` the spike counts of the window and `s` the firing-rate
scale: the spike count average of the window, the rate estimate that uses
every spike of `t` and nothing of the observations before (a low-pass read
at the window's end would mix in `o_{t-1}` for a time `tau`). A synapse
`tau` on the connections out of the hidden layers smooths the spike trains
across windows; the sweep measures what it costs or buys.

CartPole's observations are of order 0.01 to 1, so the hidden currents
`J = W_1 o + b_1` give rates of order 1 Hz: at scale 1 a neuron fires about
once a second, 0.02 spikes per window, and the policy sees almost nothing.
`scale_firing_rates = s` drives the neurons with `s J` and divides their
output by `s` (exact for ReLU), so a window holds about `s J k dt` spikes
and the rounding error of the rate estimate falls as `1 / (s k dt)`.
The sweep folds `s` into the weights (`fold_scale`, the same network) so
that one compiled program runs every scale.

Rewards are undiscounted returns of episodes limited to 200 steps (the
CartPole-v0 limit; "solved" means an average of 195 or more over 100
episodes), greedy actions for the rate policy and the spiking one alike.

References:
  T. DeWolf (2020), "Converting your Keras model into a spiking neural
  network", studywolf blog.
  T. DeWolf (2018), "Natural policy gradient in TensorFlow", studywolf blog.
  A. Rajeswaran, K. Lowrey, E. Todorov, S. Kakade (2017), "Towards
  generalization and simplicity in continuous control", NeurIPS.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxctl.experiments.npg_sessions import (NPGSettings, SessionTrainer, confidence_interval,
                                             make_env, session_keys)
from jaxctl.spiking.network import SpikingNetwork, dense, rate_apply, spiking_network
from jaxctl.spiking.synapses import check_dt, check_tau
from jaxctl.util.checks import PyTree, check_positive_int, check_scalar

SOLVED = 195.0  # the CartPole-v0 criterion: average return over 100 episodes


class CartpoleSpikingSettings(NamedTuple):
    """Sizes of the study (`quick()` gives a tiny version).

    Attributes:
      policy_hidden: hidden widths of the ReLU policy.
      policy_seeds: independently trained policies (vmapped NPG sessions).
      seed: PRNG seed of training and evaluation.
      train_batches: NPG batches per policy.
      train_envs: 200-step rollouts per batch.
      delta, rel_damping, gamma: NPG step size, relative damping, discount.
      episodes: evaluation episodes per policy and configuration.
      max_episode_steps: episode limit (200: CartPole-v0's).
      dt: network step (s); `env_dt / dt` network steps per environment step.
      scales: firing-rate scales swept.
      taus: synapse time constants (s, None = no synapse) on the connections
        out of the hidden layers.
    """

    policy_hidden: tuple[int, ...] = (32,)
    policy_seeds: int = 10
    seed: int = 0
    train_batches: int = 80
    train_envs: int = 4
    delta: float = 0.01
    rel_damping: float = 0.01
    gamma: float = 0.99
    episodes: int = 100
    max_episode_steps: int = 200
    dt: float = 0.001
    scales: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0,
                                 1000.0)
    taus: tuple[float | None, ...] = (None, 0.005, 0.02)

    @classmethod
    def quick(cls) -> "CartpoleSpikingSettings":
        """A tiny study for smoke tests (about 30 s of CPU on 2 cores, nearly all compiling)."""
        return cls(policy_hidden=(8,), policy_seeds=2, train_batches=4, train_envs=1,
                   episodes=4, max_episode_steps=50, scales=(1.0, 100.0), taus=(None,))


def check_settings(settings: CartpoleSpikingSettings) -> CartpoleSpikingSettings:
    """Validates the study's settings (ValueError naming the field)."""
    for name in ("policy_seeds", "train_batches", "train_envs", "episodes", "max_episode_steps"):
        check_positive_int(name, getattr(settings, name))
    if not settings.policy_hidden:
        raise ValueError("policy_hidden must hold at least one width (spiking neurons live in "
                         "the hidden layers)")
    for h in settings.policy_hidden:
        check_positive_int("policy_hidden", h)
    check_dt(settings.dt)
    if not settings.scales or not settings.taus:
        raise ValueError("scales and taus must each hold at least one value")
    for s in settings.scales:
        check_scalar("scales", s, low=0.0, low_open=True, high=float("inf"), high_open=True)
    for tau in settings.taus:
        check_tau("taus", tau)
    return settings


def steps_per_env_step(env_dt: float, dt: float) -> int:
    """`k = env_dt / dt`, the network steps per environment step (an integer >= 1).

    Example:
      >>> steps_per_env_step(0.02, 0.001)
      20
    """
    env_dt, dt = check_dt(env_dt), check_dt(dt)
    k = round(env_dt / dt)
    if k < 1 or abs(k * dt - env_dt) > 1e-9 * env_dt:
        raise ValueError(f"dt must divide the environment step {env_dt} s into n >= 1 network "
                         f"steps, got dt={dt} ({env_dt / dt:.4g} steps)")
    return k


def npg_settings(settings: CartpoleSpikingSettings) -> NPGSettings:
    """The NPG training variant: damped dense NPG on a ReLU softmax policy."""
    return NPGSettings(env_name="CartPole-v1", num_steps=200, num_envs=settings.train_envs,
                       max_episode_steps=settings.max_episode_steps, algo="npg",
                       delta=settings.delta, rel_damping=settings.rel_damping,
                       policy_hidden=tuple(settings.policy_hidden), policy_activation="relu",
                       gamma=settings.gamma, bootstrap=True)


def policy_network(num_layers: int, scale: float, tau: float | None,
                   dt: float) -> SpikingNetwork:
    """The policy's `num_layers` dense layers as spiking ReLUs with `tau` after each hidden layer.

    The input connection has no synapse (the held observation needs none);
    the read-out is unfiltered (the window average is the filter).
    """
    return spiking_network((dense(),) * num_layers, dt=dt,
                           synapses=[None] + [tau] * (num_layers - 1),
                           scale_firing_rates=scale)


def fold_scale(params: PyTree, scale: jax.Array) -> PyTree:
    """The parameters that make a scale-1 network equal the network at `scale_firing_rates=scale`.

    With the scale `s` on every hidden layer, layer `i` drives its neurons
    with `s (W_i h_{i-1} / s + b_i)`: so `W_1 -> s W_1`, `b_i -> s b_i` for
    every hidden layer, `W_L -> W_L / s` for the read-out. The scale becomes
    an array, so one compiled program sweeps it (`vmap`); for a power of 2
    the result is bitwise that of `spiking_network(scale_firing_rates=s)`.

    Example:
      >>> p = fold_scale([{"w": jnp.ones((4, 3)), "b": jnp.ones(3)},
      ...                 {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}], 4.0)
      >>> [float(p[0]["w"][0, 0]), float(p[0]["b"][0]), float(p[1]["w"][0, 0]), float(p[1]["b"][0])]
      [4.0, 4.0, 0.25, 1.0]
    """
    last = len(params) - 1
    return [{"w": p["w"] * scale if i == 0 else (p["w"] / scale if i == last else p["w"]),
             "b": p["b"] * scale if i < last else p["b"]} for i, p in enumerate(params)]


class Episode(NamedTuple):
    """One closed-loop episode, per environment step `t` (leading axis `T`).

    Attributes:
      obs: (T, 4) observations the actions were taken in.
      actions: (T,) int32 actions.
      logits: (T, 2) the controller's read-out (window average for spikes).
      alive: (T,) bool, the episode had not ended before `t`.
      spikes: (T,) spikes of all hidden neurons in the window (0 for rates).
      reward: the episode's undiscounted return (a scalar).
    """

    obs: jax.Array
    actions: jax.Array
    logits: jax.Array
    alive: jax.Array
    spikes: jax.Array
    reward: jax.Array


def closed_loop(controller: Callable, controller_init: Callable, env: Any, env_params: Any,
                key: jax.Array, num_steps: int) -> Episode:
    """Runs `controller` against the environment for `num_steps` steps in one `lax.scan`.

    `controller_init(obs) -> state` and `controller(state, obs) -> (state,
    logits, spikes)`; the action is `argmax(logits)`. Rewards count until
    the first `done`; the state carries from step to step.
    """
    num_steps = check_positive_int("num_steps", num_steps)
    k_reset, k_run = jax.random.split(key)
    obs, env_state = env.reset(k_reset, env_params)

    def body(carry, step_key):
        obs, env_state, state, alive = carry
        state, logits, spikes = controller(state, obs)
        action = jnp.argmax(logits).astype(jnp.int32)
        out = env.step(step_key, env_state, action, env_params)
        next_obs, next_env_state, reward = out[0], out[1], out[2]
        done = out[3] | out[4] if len(out) == 6 else out[3]  # gymnax >= 1.0: terminated, truncated
        step = (obs, action, logits, alive, spikes, jnp.where(alive, reward, 0.0))
        return (next_obs.astype(obs.dtype), next_env_state, state, alive & ~done), step

    alive = jnp.ones((), bool)
    _, (o, a, logits, alive, spikes, rewards) = lax.scan(
        body, (obs, env_state, controller_init(obs), alive), jax.random.split(k_run, num_steps))
    return Episode(o, a, logits, alive, spikes, jnp.sum(rewards))


def spiking_controller(net: SpikingNetwork, params: PyTree, k: int):
    """`(init, controller)` for `closed_loop`: `k` network steps per environment step."""
    k = check_positive_int("steps per environment step", k)

    def init(obs):
        return net.init(params, obs)

    def controller(state, obs):
        sim = net.run(params, obs, k, state=state, probe=True)
        count = sum(jnp.sum(s) for s in sim.spikes)
        return sim.state, jnp.mean(sim.output, axis=0), count

    return init, controller


def rate_controller(params: PyTree, window: float):
    """`(init, controller)` for `closed_loop`: the rate ReLU policy, no state.

    Its "spikes" are the count expected at scale 1 in a `window` (s):
    `window * sum_j r_j`, the hidden rates `r_j` in Hz.
    """
    layers = (dense(),) * len(params)

    def controller(state, obs):
        logits, hidden = rate_apply(layers, params, obs)
        return state, logits, window * sum(jnp.sum(h) for h in hidden)

    return (lambda obs: ()), controller


def evaluate(make_controller: Callable, params: PyTree, keys: jax.Array, env: Any, env_params: Any,
             num_steps: int) -> Episode:
    """Episodes of `make_controller(policy params)` for every policy (leading axis of
    `params`) and key: fields of shape `(policies, keys, ...)`. Jit it."""

    def one(p, key):
        init, controller = make_controller(p)
        return closed_loop(controller, init, env, env_params, key, num_steps)

    return jax.vmap(lambda p: jax.vmap(lambda key: one(p, key))(keys))(params)


def _summary(episodes: Episode, rate_logits: jax.Array | None, n_hidden: int,
             env_dt: float) -> dict[str, Any]:
    """Reward mean and 95% CI over policies, and per-policy figures, as plain Python."""
    rewards = np.asarray(episodes.reward, np.float64)  # (policies, episodes)
    mean, half = confidence_interval(rewards.mean(axis=1))
    alive = np.asarray(episodes.alive)
    out = {"mean_reward": float(mean), "ci95": float(half),
           "per_policy": rewards.mean(axis=1).tolist(),
           "solved_fraction": float(np.mean(rewards >= SOLVED)),
           "episodes": int(rewards.size)}
    steps = max(alive.sum(), 1)
    out["mean_rate_hz"] = float(np.asarray(episodes.spikes)[alive].sum() /
                                (steps * n_hidden * env_dt))
    if rate_logits is not None:
        same = np.asarray(episodes.actions) == np.asarray(jnp.argmax(rate_logits, axis=-1))
        out["action_agreement"] = float(same[alive].mean())
    return out


def run_study(settings: CartpoleSpikingSettings = CartpoleSpikingSettings(),
              progress: Callable | None = None) -> dict[str, Any]:
    """Trains the ReLU policies, then runs them as rate and as spiking controllers.

    Args:
      settings: the study's sizes.
      progress: optional `progress(done, total, **metrics)`, called after
        every training chunk, the rate policy's evaluation and each tau's
        sweep over the scales (`total` fixed for the whole study).

    Returns:
      A JSON-able dict: `rate_reward` (mean, ci95, per_policy, ...),
      `spiking` (one record per scale and tau: mean_reward, ci95 over
      policies, solved_fraction of episodes with a return >= 195,
      action_agreement with the rate policy on the spiking trajectory,
      mean_rate_hz, ...; the rate policy's mean_rate_hz is its mean hidden
      activation, the rate at scale 1), `default` (`choose_default`),
      `steps_per_env_step`,
      `dt`, `env_dt`, `episode_limit`, `train_max_reward` (per batch, mean
      over policies), `wall_seconds`, `settings`.
    """
    settings = check_settings(settings)
    npg_cfg = npg_settings(settings)
    env, env_params = make_env(npg_cfg)
    env_dt = float(env_params.tau)
    k = steps_per_env_step(env_dt, settings.dt)
    chunk = next(c for c in (10, 5, 4, 2, 1) if settings.train_batches % c == 0)
    total = settings.train_batches // chunk + 1 + len(settings.taus)
    report = progress if progress is not None else (lambda done, total, **m: None)
    t_train = time.perf_counter()
    trainer = SessionTrainer(npg_cfg, chunk)
    state = trainer.initial_state(session_keys(settings.seed, settings.policy_seeds))
    state, log = trainer.run(state, settings.train_batches, lambda _, done, m: report(
        done // chunk, total, stage="train", max_reward=float(np.mean(m.max_return[:, -1]))))
    params = state.policy
    train_seconds = time.perf_counter() - t_train
    done = settings.train_batches // chunk

    keys = jax.random.split(jax.random.PRNGKey(settings.seed + 1), settings.episodes)
    n_steps, n_layers = settings.max_episode_steps, len(params)
    n_hidden = sum(settings.policy_hidden)
    t_eval = time.perf_counter()
    rate_eps = jax.jit(lambda p, ks: evaluate(lambda q: rate_controller(q, env_dt), p, ks, env,
                                              env_params, n_steps))(params, keys)
    rate = _summary(rate_eps, None, n_hidden, env_dt)
    done += 1
    report(done, total, stage="rate policy", reward=rate["mean_reward"])
    rate_logits_of = jax.jit(jax.vmap(jax.vmap(jax.vmap(
        lambda p, o: rate_apply((dense(),) * n_layers, p, o)[0], in_axes=(None, 0)),
        in_axes=(None, 0)), in_axes=(0, 0)))
    scales = jnp.asarray(settings.scales, jax.tree.leaves(params)[0].dtype)
    folded = jax.vmap(fold_scale, in_axes=(None, 0))(params, scales)
    records, compile_seconds = [], 0.0
    for tau in settings.taus:
        net = policy_network(n_layers, 1.0, tau, settings.dt)
        fn = jax.jit(jax.vmap(lambda p, ks: evaluate(
            lambda q: spiking_controller(net, q, k), p, ks, env, env_params, n_steps),
            in_axes=(0, None)))
        t0 = time.perf_counter()
        compiled = fn.lower(folded, keys).compile()
        compile_seconds += time.perf_counter() - t0
        eps = jax.block_until_ready(compiled(folded, keys))
        for i, scale in enumerate(settings.scales):
            eps_i = jax.tree.map(lambda x: x[i], eps)
            records.append({"scale": float(scale), "tau": tau,
                            **_summary(eps_i, rate_logits_of(params, eps_i.obs), n_hidden,
                                       env_dt)})
        done += 1
        report(done, total, stage=f"spiking tau={tau}",
               reward=max(r["mean_reward"] for r in records[-len(settings.scales):]))
    eval_seconds = time.perf_counter() - t_eval
    return {
        "rate_reward": rate,
        "spiking": records,
        "default": choose_default(records),
        "steps_per_env_step": k,
        "dt": settings.dt,
        "env_dt": env_dt,
        "episode_limit": settings.max_episode_steps,
        "solved_threshold": SOLVED,
        "train_max_reward": log["metrics"].max_return.mean(axis=0).tolist(),
        "wall_seconds": {"train": train_seconds, "train_compile": log["compile_seconds"],
                         "evaluate": eval_seconds, "evaluate_compile": compile_seconds,
                         "total": train_seconds + eval_seconds},
        "settings": {**settings._asdict(), "npg": npg_cfg._asdict()},
    }


def choose_default(records: list[dict]) -> dict[str, Any]:
    """The smallest scale whose mean reward reaches 195 (best tau there), else the best record."""
    solved = [r for r in records if r["mean_reward"] >= SOLVED]
    pool = solved or records
    best = min(pool, key=lambda r: (r["scale"] if solved else 0.0, -r["mean_reward"]))
    return {"scale": best["scale"], "tau": best["tau"], "mean_reward": best["mean_reward"],
            "ci95": best["ci95"], "solved": bool(solved)}
