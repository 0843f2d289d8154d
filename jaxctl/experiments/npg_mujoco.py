"""Linear-policy natural policy gradient on gymnasium MuJoCo (Rajeswaran et al. 2017).

mjrl-style NPG: per iteration, N whole trajectories (at most `H` steps each)
from a gymnasium vector env; the host loop steps the environments and ONE
jitted call per vector step gives the actions of all N. Then one jitted
update:

- observations `z = clip((s - mu) / sigma, -10, 10)`, running statistics of
  every observation seen before the iteration (`RunningStats`), updated after;
- policy `a ~ N(W z + b, diag(exp(2 log_std)))` (linear, `gaussian_policy`
  with `hidden=()`); actions are clipped to the box by the host, the score is
  that of the unclipped sample;
- baseline: mjrl's `LinearBaseline` (rllab's linear feature baseline, Duan
  et al. 2016), a ridge fit (1e-5) of the discounted returns on
  `[clip(s, -10, 10) / 10, 1, u, u^2, u^3, u^4]`, `u = t / 1000`, fitted after
  the advantages of the iteration are taken (as mjrl does);
- GAE (gamma = 0.995, lambda = 0.97), a time-limit cut bootstrapped with the
  baseline's value, advantages standardised over the batch (mjrl);
- `g = mean(score * A)`, `F v = mean(score (score . v))` matrix-free
  (forward then reverse mode, padding masked out), 10 CG iterations on
  `F + 1e-4 I`, step `sqrt(delta / g^T F^-1 g) F^-1 g` (`jaxctl.optim.npg.npg`).

Defaults checked against mjrl (github.com/aravindr93/mjrl): `NPG` has
`FIM_invert_args={'iters': 10, 'damping': 1e-4}`; its example configs use
`rl_gamma=0.995`, `rl_gae=0.97`, `rl_step_size=0.05` (Hopper; 0.1 Swimmer),
`init_log_std=-0.5` and 10 trajectories per iteration (Swimmer). Thresholds
and sample counts: Mania, Guy & Recht (2018), Table 1.

References:
  A. Rajeswaran, K. Lowrey, E. Todorov, S. Kakade (2017), "Towards
  generalization and simplicity in continuous control", NeurIPS.
  H. Mania, A. Guy, B. Recht (2018), "Simple random search provides a
  competitive approach to reinforcement learning", NeurIPS.
  Y. Duan, X. Chen, R. Houthooft, J. Schulman, P. Abbeel (2016),
  "Benchmarking deep reinforcement learning for continuous control", ICML.
"""

from __future__ import annotations

import functools
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxctl.control.rl import gae
from jaxctl.models.features import RunningStats, normalize_obs, running_stats_init, \
    running_stats_update
from jaxctl.models.policies import Policy, gaussian_policy
from jaxctl.optim.npg import npg
from jaxctl.util.checks import PyTree, check_finite_positive, check_positive_int, check_scalar

TASKS = {"swimmer": "Swimmer-v5", "hopper": "Hopper-v5", "halfcheetah": "HalfCheetah-v5",
         "walker2d": "Walker2d-v5"}
# Mania et al. (2018), Table 1: reward thresholds, and the episodes NG-lin (Rajeswaran et al.
# 2017) needed to reach them.
THRESHOLDS = {"swimmer": 325.0, "hopper": 3120.0, "halfcheetah": 3430.0, "walker2d": 4390.0}
NG_LIN_EPISODES = {"swimmer": 1450, "hopper": 13920, "halfcheetah": 11250, "walker2d": 36840}


class MujocoSettings(NamedTuple):
    """Settings of one NPG run (defaults: mjrl's, see the module docstring); `hidden` gives the
    policy mean's tanh MLP widths (`()`: linear, Rajeswaran et al. 2017)."""
    task: str = "swimmer"
    num_traj: int = 10
    horizon: int = 1000
    delta: float = 0.05
    damping: float = 1e-4
    cg_iters: int = 10
    gamma: float = 0.995
    lam: float = 0.97
    log_std_init: float = -0.5
    baseline_reg: float = 1e-5
    hidden: tuple[int, ...] = ()


class State(NamedTuple):
    """Carried between iterations: policy, observation statistics, baseline coefficients."""
    params: PyTree
    stats: RunningStats
    baseline: jax.Array  # (obs_dim + 5,)
    opt_state: PyTree


class Batch(NamedTuple):
    """N padded trajectories, (N, H, ...); `mask[i, t]` marks the steps trajectory i took."""
    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    mask: np.ndarray


def check_settings(cfg: MujocoSettings) -> MujocoSettings:
    """Raises a ValueError naming the bad setting."""
    if cfg.task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {cfg.task!r}")
    for name in ("num_traj", "horizon", "cg_iters"):
        check_positive_int(name, getattr(cfg, name))
    for width in cfg.hidden:
        check_positive_int("hidden", width)
    check_finite_positive("delta", cfg.delta)
    for name in ("damping", "baseline_reg"):
        check_scalar(name, getattr(cfg, name), low=0.0)
    for name in ("gamma", "lam"):
        check_scalar(name, getattr(cfg, name), low=0.0, high=1.0)
    return cfg


def baseline_features(obs: jax.Array, t: jax.Array) -> jax.Array:
    """mjrl's linear-baseline features `[clip(s, -10, 10) / 10, 1, u, u^2, u^3, u^4]`, `u = t/1000`."""
    u = (t / 1000.0).astype(obs.dtype)[..., None]
    return jnp.concatenate([jnp.clip(obs, -10.0, 10.0) / 10.0, jnp.ones_like(u), u, u**2, u**3,
                            u**4], axis=-1)


def make_agent(cfg: MujocoSettings, obs_dim: int, action_dim: int, low: np.ndarray,
               high: np.ndarray) -> tuple[Policy, Callable, Callable, Callable]:
    """`(policy, init(key) -> State, act(state, key, t, obs) -> (raw, clipped actions),
    update(state, batch) -> (state, metrics))`, `act` and `update` jitted; one set (and one
    compilation) per settings, sizes and action box."""
    check_settings(cfg)
    return _make_agent(cfg, obs_dim, action_dim, tuple(np.asarray(low, np.float32).tolist()),
                       tuple(np.asarray(high, np.float32).tolist()))


@functools.lru_cache(maxsize=16)
def _make_agent(cfg: MujocoSettings, obs_dim: int, action_dim: int, low: tuple, high: tuple):
    policy = gaussian_policy(obs_dim, action_dim, hidden=tuple(cfg.hidden),
                             log_std_init=cfg.log_std_init)
    opt = npg(cfg.delta, fisher="cg", damping=cfg.damping, cg_maxiter=cfg.cg_iters)
    low, high = jnp.asarray(low, jnp.float32), jnp.asarray(high, jnp.float32)

    def init(key):
        params = policy.init(key)
        return State(params, running_stats_init(obs_dim), jnp.zeros((obs_dim + 5,), jnp.float32),
                     opt.init(params))

    def act(state, key, t, obs):
        if obs.shape[-1] != obs_dim:
            raise ValueError(f"obs must have {obs_dim} features (the task's observation size), "
                             f"got shape {obs.shape}")
        z = normalize_obs(state.stats, obs)
        keys = jax.random.split(jax.random.fold_in(key, t), obs.shape[0])
        raw = jax.vmap(policy.sample, (None, 0, 0))(state.params, keys, z)
        return raw, jnp.clip(raw, low, high)

    def update(state, batch):
        mask = batch.mask.astype(jnp.float32)
        N, H = mask.shape
        n = jnp.sum(mask)
        t = jnp.broadcast_to(jnp.arange(H), (N, H))
        values = baseline_features(batch.obs, t) @ state.baseline * mask
        next_values = baseline_features(batch.next_obs, t + 1) @ state.baseline
        last = mask.astype(bool) & ~jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])],
                                                     1).astype(bool)
        ends = last | batch.terminated
        adv, _ = jax.vmap(gae, (0, 0, 0, 0, 0, None, None))(
            batch.rewards, values, next_values, batch.terminated, ends, cfg.gamma, cfg.lam)
        returns, _ = jax.vmap(gae, (0, 0, 0, 0, 0, None, None))(
            batch.rewards, jnp.zeros_like(values), jnp.zeros_like(values), ends, ends,
            cfg.gamma, 1.0)
        mean_adv = jnp.sum(adv * mask) / n
        std_adv = jnp.sqrt(jnp.sum(mask * (adv - mean_adv) ** 2) / n)
        adv = mask * (adv - mean_adv) / (std_adv + 1e-6)

        z = normalize_obs(state.stats, batch.obs).reshape(N * H, obs_dim)
        a = batch.actions.reshape(N * H, action_dim)
        w = mask.reshape(-1)
        logp = lambda p: jax.vmap(policy.log_prob, (None, 0, 0))(p, z, a)
        surrogate = lambda p: jnp.sum(logp(p) * adv.reshape(-1)) / n
        grads = jax.tree.map(jnp.negative, jax.grad(surrogate)(state.params))
        _, jvp_fn = jax.linearize(logp, state.params)
        vjp_fn = jax.linear_transpose(jvp_fn, state.params)
        fvp = lambda v: vjp_fn(w * jvp_fn(v) / n)[0]
        updates, opt_state = opt.update(grads, state.opt_state, state.params, fvp=fvp)
        params = optax.apply_updates(state.params, updates)

        phi = baseline_features(batch.obs, t).reshape(N * H, -1) * w[:, None]
        k = phi.shape[1]
        ridge = jnp.sqrt(jnp.asarray(cfg.baseline_reg, phi.dtype)) * jnp.eye(k, dtype=phi.dtype)
        coef = jnp.linalg.lstsq(jnp.concatenate([phi, ridge]),
                                jnp.concatenate([returns.reshape(-1) * w, jnp.zeros(k)]))[0]
        coef = jnp.where(jnp.all(jnp.isfinite(coef)), coef, state.baseline)
        stats = running_stats_update(state.stats, batch.obs.reshape(N * H, obs_dim), w > 0)
        metrics = {"return": jnp.sum(batch.rewards * mask) / N, "step_size": opt_state.step_size,
                   "log_std": jnp.mean(params["log_std"])}
        return State(params, stats, coef, opt_state), metrics

    return policy, init, jax.jit(act), jax.jit(update)


def _empty_batch(N: int, H: int, obs_dim: int, action_dim: int) -> Batch:
    f = lambda *shape: np.zeros(shape, np.float32)
    return Batch(f(N, H, obs_dim), f(N, H, action_dim), f(N, H), f(N, H, obs_dim),
                 np.zeros((N, H), bool), np.zeros((N, H), bool))


def collect_vector(envs, act: Callable, state: State, key: jax.Array, H: int) -> Batch:
    """One trajectory per sub-env of a gymnasium vector env (steps after an episode's end are
    masked out); one `act` call per vector step."""
    N = envs.num_envs
    obs_dim, action_dim = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]
    b = _empty_batch(N, H, obs_dim, action_dim)
    obs, _ = envs.reset()
    alive = np.ones(N, bool)
    for t in range(H):
        raw, clipped = act(state, key, t, obs.astype(np.float32))
        nxt, rew, term, trunc, _ = envs.step(np.asarray(clipped))
        b.obs[:, t], b.actions[:, t], b.rewards[:, t] = obs, np.asarray(raw), rew
        b.next_obs[:, t], b.terminated[:, t], b.mask[:, t] = nxt, term & alive, alive
        alive = alive & ~(term | trunc)
        obs = nxt
        if not alive.any():
            break
    b.rewards[~b.mask] = 0.0
    return b


def collect_sequential(env, act: Callable, state: State, key: jax.Array, N: int, H: int) -> Batch:
    """The same batch mjrl-style: one env, one trajectory after the other, one policy call on one
    observation per step (the baseline of the speed comparison)."""
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    b = _empty_batch(N, H, obs_dim, action_dim)
    for i in range(N):
        obs, _ = env.reset()
        for t in range(H):
            raw, clipped = act(state, jax.random.fold_in(key, i), t,
                               obs[None].astype(np.float32))
            nxt, rew, term, trunc, _ = env.step(np.asarray(clipped[0]))
            b.obs[i, t], b.actions[i, t], b.rewards[i, t] = obs, np.asarray(raw[0]), rew
            b.next_obs[i, t], b.terminated[i, t], b.mask[i, t] = nxt, term, True
            obs = nxt
            if term or trunc:
                break
    return b


def make_envs(task: str, num_envs: int, seed: int):
    """`gymnasium.make_vec(..., vectorization_mode="sync")` of the task, seeded."""
    import gymnasium

    envs = gymnasium.make_vec(TASKS[task], num_envs=num_envs, vectorization_mode="sync")
    envs.reset(seed=seed)
    envs.action_space.seed(seed)
    return envs


def train(cfg: MujocoSettings, seed: int, iterations: int, max_seconds: float = float("inf"),
          threshold: float | None = None, callback: Callable | None = None,
          init_state: State | None = None, return_state: bool = False) -> dict:
    """NPG on `cfg.task` for `iterations` (or until `max_seconds` of wall time); per iteration the
    mean return of its N trajectories, cumulative env steps and wall seconds. `init_state` (e.g.
    a policy distilled by `jaxctl.experiments.mbmf.distill`) replaces the random initial state;
    `return_state=True` returns `(log, final State)`.

    Steps and seconds to `threshold` are those of the first iteration whose mean training return
    (stochastic policy, the N trajectories of that iteration) reaches it (None if never).
    """
    check_positive_int("iterations", iterations)
    envs = make_envs(cfg.task, cfg.num_traj, 1000 * seed)
    space = envs.single_action_space
    obs_dim = envs.single_observation_space.shape[0]
    _, init, act, update = make_agent(cfg, obs_dim, space.shape[0], space.low, space.high)
    key, k_init = jax.random.split(jax.random.PRNGKey(seed))
    state = init(k_init) if init_state is None else init_state
    log = {"returns": [], "env_steps": [], "seconds": [], "step_size": [], "episodes": []}
    steps, start, hit = 0, time.perf_counter(), None
    for it in range(iterations):
        batch = collect_vector(envs, act, state, jax.random.fold_in(key, it), cfg.horizon)
        state, m = update(state, batch)
        steps += int(batch.mask.sum())
        ret = float(m["return"])
        log["returns"].append(ret)
        log["env_steps"].append(steps)
        log["seconds"].append(time.perf_counter() - start)
        log["step_size"].append(float(m["step_size"]))
        log["episodes"].append((it + 1) * cfg.num_traj)
        if callback is not None:
            callback(it, log)
        if threshold is not None and hit is None and ret >= threshold:
            hit = it
        if log["seconds"][-1] >= max_seconds:
            break
    envs.close()
    log["threshold_iteration"] = None if hit is None else hit + 1
    for name in ("env_steps", "seconds", "episodes"):
        log[f"{name}_to_threshold"] = None if hit is None else log[name][hit]
    log["steps_per_second"] = steps / log["seconds"][-1]
    return (log, state) if return_state else log


def aligned_returns(logs: list[dict], points: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """`(env_steps, returns)`: a common grid up to the shortest run's steps and, per seed, the
    return of the last iteration finished by each grid point (the first iteration's before it)."""
    last = min(log["env_steps"][-1] for log in logs)
    first = max(log["env_steps"][0] for log in logs)
    grid = np.linspace(first, last, points).round().astype(np.int64)
    rows = [np.asarray(log["returns"])[np.searchsorted(log["env_steps"], grid, side="right") - 1]
            for log in logs]
    return grid, np.stack(rows)
