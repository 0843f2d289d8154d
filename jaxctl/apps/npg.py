"""Natural policy gradient on gymnax CartPole-v1 and Pendulum-v1 (`jaxctl npg`).

Reproduces the seed ("Natural policy gradient in TensorFlow"): a softmax
policy on CartPole with 200-step episodes, batches of exactly 200 time steps
(as many episodes as fit, the last one cut by the batch end), a value network
as the baseline of the advantages, 10 sessions x 300 batches, the max reward
per batch (mean and 95% confidence interval over sessions), natural policy
gradient against vanilla policy gradient with everything else equal.

Every session of one variant runs in ONE jitted program: the sessions are a
`vmap` axis (one PRNG key each), batches a `lax.scan` inside it. The scan
runs in chunks of a few batches so the command can show progress; the chunk
function compiles once.

"Max reward per batch" is the largest undiscounted return among the
episodes of the batch, the episode cut by the batch end counted with the
steps it got; since an episode is capped at 200 steps and each batch starts
from a reset, 200 means the first episode balanced the pole for the whole
batch (the seed computed it the same way).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxctl.core.fisher import fisher_operator
from jaxctl.core.jacobians import per_sample_grads
from jaxctl.models.policies import categorical_policy, gaussian_policy, value_function
from jaxctl.optim.npg import npg
from jaxctl.control.rl import episode_ends, episode_stats, gae, rollout, score_gradient

PyTree = Any


class Config(NamedTuple):
    """Static settings of one training variant (hashable; a new value recompiles).

    Attributes:
      env_name: gymnax environment, `"CartPole-v1"` or `"Pendulum-v1"`.
      num_steps: time steps per batch and environment (the seed: 200).
      num_envs: environments per batch (CartPole: 1, as the seed).
      max_episode_steps: time limit of an episode (the seed: 200).
      algo: `"npg"` (normalized natural gradient) or `"pg"` (Adam on the
        surrogate, the seed's vanilla policy gradient).
      delta: NPG trust-region size `step^T M step` (the seed: 0.001).
      rel_damping, damping: NPG Tikhonov damping `lambda = damping +
        rel_damping * max eig(F)`; 0 and 0 is the seed's pseudo-inverse.
      rtol: pseudo-inverse eigenvalue cut-off (the seed: 1e-6).
      fisher: `"dense"` (scores, SVD) or `"cg"` (matrix-free `fisher_operator`
        + CG).
      cg_maxiter: CG iterations for `fisher="cg"` (mjrl: 10).
      pg_lr: Adam learning rate of the vanilla PG (the seed: 0.01).
      policy_hidden: hidden widths of the policy MLP (`()` = the seed's
        linear softmax policy).
      policy_output_scale: initial scale of the policy's last layer.
      log_std_init: Gaussian policy's initial log standard deviation.
      value_hidden, value_activation: value MLP (the seed: (10,), relu).
      value_lr, value_epochs: Adam steps on the value loss per batch (the
        seed: 0.1, 1).
      gamma, lam: discount and GAE lambda (the seed: 0.97 and Monte-Carlo,
        lam = 1).
      bootstrap: bootstrap the value after episodes cut by the time limit or
        the batch end (the seed: no, a cut episode's return stops there).
      reward_scale: rewards are multiplied by it for learning (not in the
        reported returns).
    """

    env_name: str = "CartPole-v1"
    num_steps: int = 200
    num_envs: int = 1
    max_episode_steps: int = 200
    algo: str = "npg"
    delta: float = 0.001
    rel_damping: float = 0.0
    damping: float = 0.0
    rtol: float = 1e-6
    fisher: str = "dense"
    cg_maxiter: int = 10
    pg_lr: float = 0.01
    policy_hidden: tuple[int, ...] = ()
    policy_output_scale: float = 0.01
    log_std_init: float = -0.5
    value_hidden: tuple[int, ...] = (10,)
    value_activation: str = "relu"
    value_lr: float = 0.1
    value_epochs: int = 1
    gamma: float = 0.97
    lam: float = 1.0
    bootstrap: bool = False
    reward_scale: float = 1.0


class SessionState(NamedTuple):
    """Everything one training session carries from batch to batch."""

    policy: PyTree
    value: PyTree
    policy_opt: PyTree
    value_opt: PyTree
    key: jax.Array
    batch: jax.Array  # int32


class BatchMetrics(NamedTuple):
    """Per-batch figures of one session (leading axes added by scan / vmap)."""

    max_return: jax.Array
    mean_return: jax.Array
    num_episodes: jax.Array
    step_size: jax.Array
    value_loss: jax.Array


def make_env(config: Config):
    """The gymnax environment and its parameters with the configured time limit."""
    import gymnax

    env, env_params = gymnax.make(config.env_name)
    env_params = env_params.replace(max_steps_in_episode=config.max_episode_steps)
    return env, env_params


def make_policy_value(config: Config, env, env_params):
    """The policy (categorical for a discrete action space, else Gaussian) and value MLPs."""
    obs_dim = int(np.prod(env.observation_space(env_params).shape))
    space = env.action_space(env_params)
    if not hasattr(space, "n"):  # continuous (Box) actions
        action_dim = int(np.prod(space.shape)) or 1
        scale = float(np.max(np.abs(np.asarray(space.high))))
        policy = gaussian_policy(obs_dim, action_dim, config.policy_hidden,
                                 output_scale=config.policy_output_scale,
                                 log_std_init=config.log_std_init, action_scale=scale)
    else:
        policy = categorical_policy(obs_dim, int(env.num_actions), config.policy_hidden,
                                    output_scale=config.policy_output_scale)
    value = value_function(obs_dim, config.value_hidden, activation=config.value_activation)
    return policy, value


def make_session(config: Config):
    """Pure `init(key) -> SessionState` and `step(state) -> (state, BatchMetrics)`.

    One `step` is one batch: rollout (`num_envs` x `num_steps`), advantages
    from the current value network, the policy update (NPG or Adam PG), then
    `value_epochs` Adam steps of the value network on the value targets.
    Both are per-session; `vmap` them over a batch of keys for many
    sessions.
    """
    if config.algo not in ("npg", "pg"):
        raise ValueError(f"algo must be 'npg' or 'pg', got {config.algo!r}")
    env, env_params = make_env(config)
    policy, vf = make_policy_value(config, env, env_params)
    if config.algo == "npg":
        policy_tx = npg(config.delta, fisher=config.fisher, rtol=config.rtol,
                        damping=config.damping, rel_damping=config.rel_damping,
                        cg_maxiter=config.cg_maxiter)
    else:
        policy_tx = optax.adam(config.pg_lr)
    value_tx = optax.adam(config.value_lr)

    def init(key):
        k_pi, k_v, k_run = jax.random.split(key, 3)
        pi_params = policy.init(k_pi)
        v_params = vf.init(k_v)
        return SessionState(pi_params, v_params, policy_tx.init(pi_params), value_tx.init(v_params),
                            k_run, jnp.zeros((), jnp.int32))

    def collect(pi_params, key):
        keys = jax.random.split(key, config.num_envs)
        return jax.vmap(lambda k: rollout(env, env_params, policy.sample, pi_params, k,
                                          config.num_steps)[0])(keys)

    def advantages(v_params, traj):
        values = jax.vmap(jax.vmap(lambda o: vf.apply(v_params, o)))(traj.obs)
        next_values = jax.vmap(jax.vmap(lambda o: vf.apply(v_params, o)))(traj.next_obs)
        ends = jax.vmap(episode_ends)(traj)
        # Without bootstrapping (the seed), a cut episode's return stops at the cut.
        stop = traj.terminated if config.bootstrap else ends
        rewards = traj.rewards * config.reward_scale
        return jax.vmap(lambda r, v, nv, s, e: gae(r, v, nv, s, e, config.gamma, config.lam))(
            rewards, values, next_values, stop, ends)

    def step(state):
        key, k_roll = jax.random.split(state.key)
        traj = collect(state.policy, k_roll)
        adv, targets = advantages(state.value, traj)
        flat = lambda x: x.reshape((-1,) + x.shape[2:])
        obs, actions, adv_f, targets_f = flat(traj.obs), flat(traj.actions), flat(adv), flat(targets)

        # Policy update: loss gradient u = -g, g = 1/T sum_t score_t A_t.
        if config.algo == "npg" and config.fisher == "dense":
            scores = per_sample_grads(policy.log_prob, state.policy, obs, actions)
            grads = jax.tree.map(jnp.negative, score_gradient(scores, adv_f))
            updates, policy_opt = policy_tx.update(grads, state.policy_opt, state.policy,
                                                   scores=scores)
        else:
            def surrogate(p):
                logp = jax.vmap(policy.log_prob, in_axes=(None, 0, 0))(p, obs, actions)
                return -jnp.mean(logp * adv_f)

            grads = jax.grad(surrogate)(state.policy)
            if config.algo == "npg":
                fvp = fisher_operator(policy.log_prob, state.policy, obs, actions)
                updates, policy_opt = policy_tx.update(grads, state.policy_opt, state.policy,
                                                       fvp=fvp)
            else:
                updates, policy_opt = policy_tx.update(grads, state.policy_opt, state.policy)
        pi_params = optax.apply_updates(state.policy, updates)
        step_size = policy_opt.step_size if config.algo == "npg" else jnp.zeros((), jnp.float32)

        # Value fit: Adam on the mean squared error to the targets.
        def value_loss(v):
            pred = jax.vmap(lambda o: vf.apply(v, o))(obs)
            return 0.5 * jnp.mean((pred - targets_f) ** 2)

        def value_epoch(_, carry):
            v, opt = carry
            g = jax.grad(value_loss)(v)
            upd, opt = value_tx.update(g, opt, v)
            return optax.apply_updates(v, upd), opt

        loss0 = value_loss(state.value)
        v_params, value_opt = lax.fori_loop(0, config.value_epochs, value_epoch,
                                            (state.value, state.value_opt))

        stats = jax.vmap(lambda r, e: episode_stats(r, e))(traj.rewards, jax.vmap(episode_ends)(traj))
        metrics = BatchMetrics(
            max_return=jnp.max(stats.max_return),
            mean_return=jnp.sum(stats.mean_return * stats.num_episodes) / jnp.maximum(
                jnp.sum(stats.num_episodes), 1),
            num_episodes=jnp.sum(stats.num_episodes).astype(jnp.int32),
            step_size=step_size.astype(jnp.float32),
            value_loss=loss0.astype(jnp.float32),
        )
        new_state = SessionState(pi_params, v_params, policy_opt, value_opt, key,
                                 state.batch + jnp.ones((), jnp.int32))
        return new_state, metrics

    return init, step


def make_train(config: Config, chunk: int):
    """Jitted, session-vmapped `init(keys)` and `run_chunk(states) -> (states, metrics)`.

    `run_chunk` advances every session by `chunk` batches (a `lax.scan`);
    the metrics have shape (sessions, chunk).
    """
    init, step = make_session(config)

    def scan_chunk(state):
        return lax.scan(lambda s, _: step(s), state, None, length=chunk)

    return jax.jit(jax.vmap(init)), jax.jit(jax.vmap(scan_chunk))


def session_keys(seed: int, sessions: int) -> jax.Array:
    return jax.random.split(jax.random.PRNGKey(seed), sessions)


def train(config: Config, keys: jax.Array, num_batches: int, chunk: int | None = None,
          progress=None) -> dict[str, Any]:
    """Trains `len(keys)` sessions of `config` vmapped in one program.

    Returns:
      A dict with `metrics` (a `BatchMetrics` of numpy arrays, shape
      (sessions, num_batches)), `compile_seconds` (first chunk minus one
      steady chunk), `chunk_seconds` (wall time of every chunk after the
      first), `seconds_per_batch_per_session` (median steady chunk time /
      (chunk * sessions)) and the final `state`.
    """
    chunk = chunk or _default_chunk(num_batches)
    if num_batches % chunk:
        raise ValueError(f"num_batches ({num_batches}) must be a multiple of chunk ({chunk})")
    init, run_chunk = make_train(config, chunk)
    sessions = keys.shape[0]
    t0 = time.perf_counter()
    state = jax.block_until_ready(init(keys))
    init_seconds = time.perf_counter() - t0
    parts, times = [], []
    for i in range(num_batches // chunk):
        t0 = time.perf_counter()
        state, metrics = jax.block_until_ready(run_chunk(state))
        times.append(time.perf_counter() - t0)
        parts.append(jax.tree.map(np.asarray, metrics))
        if progress is not None:
            progress((i + 1) * chunk, metrics)
    metrics = jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *parts)
    steady = times[1:] if len(times) > 1 else times
    per_chunk = float(np.median(steady))
    return {
        "metrics": metrics,
        "state": state,
        "init_seconds": init_seconds,
        "first_chunk_seconds": times[0],
        "compile_seconds": max(times[0] - per_chunk, 0.0),
        "chunk_seconds": steady,
        "seconds_per_batch_per_session": per_chunk / (chunk * sessions),
        "min_seconds_per_batch_per_session": float(np.min(steady)) / (chunk * sessions),
        "chunk": chunk,
    }


def _default_chunk(num_batches: int) -> int:
    for c in (10, 12, 8, 15, 5, 6, 4, 3, 2):
        if num_batches % c == 0 and num_batches // c >= 2:
            return c
    return num_batches


def confidence_interval(x: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Mean over axis 0 and the half-width of its Student-t confidence interval."""
    from scipy import stats

    n = x.shape[0]
    mean = x.mean(axis=0)
    if n < 2:
        return mean, np.zeros_like(mean)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * x.std(axis=0, ddof=1) / math.sqrt(n)
    return mean, half


def first_batch(mean: np.ndarray, threshold: float) -> int | None:
    """1-based index of the first batch whose mean reaches `threshold` (None if never)."""
    hits = np.nonzero(mean >= threshold - 1e-6)[0]
    return int(hits[0]) + 1 if hits.size else None


# ----------------------------------------------------------------------------- the variants

def cartpole_variants(args) -> dict[str, Config]:
    """The CartPole variants, everything equal except the policy update."""
    base = Config(policy_hidden=tuple(args.policy_hidden), gamma=args.gamma, lam=args.lam,
                  bootstrap=args.bootstrap, value_epochs=args.value_epochs,
                  num_steps=args.steps, max_episode_steps=args.steps)
    variants = {
        "npg-damped": base._replace(algo="npg", delta=args.delta, rel_damping=args.rel_damping),
        "npg-seed": base._replace(algo="npg", delta=args.seed_delta, rel_damping=0.0),
        "npg-cg": base._replace(algo="npg", fisher="cg", delta=args.delta, damping=args.cg_damping),
        "pg-adam": base._replace(algo="pg", pg_lr=args.pg_lr),
    }
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(chosen) - set(variants)
    if unknown:
        raise ValueError(f"--variants: unknown {sorted(unknown)}; choose from {sorted(variants)}")
    return {name: variants[name] for name in chosen}


def pendulum_config(args) -> Config:
    return Config(env_name="Pendulum-v1", num_steps=200, num_envs=args.pendulum_envs,
                  max_episode_steps=200, algo="npg", fisher="cg", delta=args.pendulum_delta,
                  damping=1e-4, cg_maxiter=10, policy_hidden=(32, 32), policy_output_scale=0.01,
                  log_std_init=-0.5, value_hidden=(64, 64), value_activation="tanh",
                  value_lr=3e-3, value_epochs=20, gamma=0.99, lam=0.97, bootstrap=True,
                  reward_scale=0.1)


def random_policy_return(config: Config, keys: jax.Array, episodes: int = 10) -> np.ndarray:
    """Mean undiscounted episode return of uniformly random actions (one per key)."""
    env, env_params = make_env(config)
    space = env.action_space(env_params)

    def act(_, key, obs):
        return space.sample(key)

    def one(key):
        traj, _ = rollout(env, env_params, act, None, key, config.max_episode_steps * episodes)
        return episode_stats(traj.rewards, episode_ends(traj)).mean_return

    return np.asarray(jax.jit(jax.vmap(one))(keys))


# ----------------------------------------------------------------------------- CLI

def add_arguments(parser) -> None:
    parser.add_argument("--sessions", type=int, default=10, help="independent training sessions (vmapped)")
    parser.add_argument("--batches", type=int, default=300, help="batches per session")
    parser.add_argument("--steps", type=int, default=200, help="time steps per batch = episode limit")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed of the sessions")
    parser.add_argument("--variants", default="npg-damped,npg-seed,npg-cg,pg-adam",
                        help="comma-separated CartPole variants")
    parser.add_argument("--delta", type=float, default=0.002, help="NPG step size (damped and CG variants)")
    parser.add_argument("--rel-damping", type=float, default=0.01,
                        help="damping relative to the largest Fisher eigenvalue (npg-damped)")
    parser.add_argument("--cg-damping", type=float, default=1e-3, help="absolute damping of npg-cg")
    parser.add_argument("--seed-delta", type=float, default=0.001,
                        help="NPG step size of the seed-faithful variant (pseudo-inverse, no damping)")
    parser.add_argument("--pg-lr", type=float, default=0.01, help="Adam learning rate of vanilla PG")
    parser.add_argument("--policy-hidden", type=int, nargs="*", default=[],
                        help="hidden widths of the policy MLP (none = the seed's linear softmax)")
    parser.add_argument("--gamma", type=float, default=0.97, help="discount")
    parser.add_argument("--lam", type=float, default=1.0, help="GAE lambda (1 = Monte-Carlo, the seed)")
    parser.add_argument("--bootstrap", action=argparse.BooleanOptionalAction, default=True,
                        help="bootstrap the value after an episode cut by the batch end "
                             "(--no-bootstrap: the seed's returns, which stop at the cut)")
    parser.add_argument("--value-epochs", type=int, default=1, help="Adam steps of the value net per batch")
    parser.add_argument("--pendulum-batches", type=int, default=200,
                        help="NPG batches on Pendulum-v1 (0 skips Pendulum)")
    parser.add_argument("--pendulum-sessions", type=int, default=5, help="Pendulum sessions (vmapped)")
    parser.add_argument("--pendulum-envs", type=int, default=10,
                        help="200-step episodes per Pendulum batch")
    parser.add_argument("--pendulum-delta", type=float, default=0.03, help="NPG step size on Pendulum")


def _plot(curves: dict[str, np.ndarray], path: str, title: str, ylabel: str, hline=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, x in curves.items():
        mean, half = confidence_interval(x)
        b = np.arange(1, mean.shape[0] + 1)
        ax.plot(b, mean, label=f"{name} (n={x.shape[0]})")
        ax.fill_between(b, mean - half, mean + half, alpha=0.25)
    if hline is not None:
        ax.axhline(hline[0], color="k", lw=0.8, ls="--", label=hline[1])
    ax.set_xlabel("batch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _summary(name: str, res: dict[str, Any], target: float) -> dict[str, Any]:
    m = res["metrics"]
    mean, half = confidence_interval(m.max_return)
    last = max(1, mean.shape[0] // 6)
    return {
        "variant": name,
        "batches_to_mean_200": first_batch(mean, target),
        "batches_to_mean_195": first_batch(mean, target - 5),
        "mean_max_reward_at_50": float(mean[min(49, mean.shape[0] - 1)]),
        "mean_max_reward_at_100": float(mean[min(99, mean.shape[0] - 1)]),
        "mean_max_reward_last": float(mean[-last:].mean()),
        "ms_per_batch_per_session": 1e3 * res["seconds_per_batch_per_session"],
        "min_ms_per_batch_per_session": 1e3 * res["min_seconds_per_batch_per_session"],
        "compile_seconds": res["compile_seconds"],
    }


def run(args, out_dir: str) -> dict:
    """Runs the CartPole variants (and NPG on Pendulum), writes PNGs; returns results."""
    from jaxctl.apps.common import Progress, markdown_table

    if args.quick:
        args.sessions, args.batches = min(args.sessions, 3), min(args.batches, 20)
        args.pendulum_batches = min(args.pendulum_batches, 10)
        args.pendulum_sessions, args.pendulum_envs = min(args.pendulum_sessions, 2), min(args.pendulum_envs, 2)
    for name in ("sessions", "batches", "steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    keys = session_keys(args.seed, args.sessions)
    results: dict[str, Any] = {"cartpole": {}, "summary": []}
    curves = {}
    for name, config in cartpole_variants(args).items():
        bar = Progress(args.batches, desc=f"CartPole {name:10s}")
        res = train(config, keys, args.batches,
                    progress=lambda n, m: bar.update(n, max_reward=float(np.mean(m.max_return[:, -1]))))
        bar.close()
        m = res["metrics"]
        curves[name] = m.max_return
        summary = _summary(name, res, float(args.steps))
        results["summary"].append(summary)
        results["cartpole"][name] = {
            "config": config._asdict(),
            "max_reward": m.max_return, "mean_reward": m.mean_return,
            "num_episodes": m.num_episodes, "step_size": m.step_size, "value_loss": m.value_loss,
            "timing": {k: res[k] for k in ("compile_seconds", "first_chunk_seconds", "init_seconds",
                                            "seconds_per_batch_per_session",
                                            "min_seconds_per_batch_per_session", "chunk")},
            **summary,
        }
    png = os.path.join(out_dir, "npg_cartpole.png")
    _plot(curves, png, f"CartPole-v1: max reward per batch ({args.steps} steps), mean and 95% CI",
          "max reward per batch", hline=(args.steps, "maximum"))
    results["cartpole_png"] = png
    rows = [[s["variant"], s["batches_to_mean_200"], s["batches_to_mean_195"],
             s["mean_max_reward_at_50"], s["mean_max_reward_last"],
             s["ms_per_batch_per_session"], s["compile_seconds"]] for s in results["summary"]]
    print(markdown_table(["variant", "batches to mean 200", "to mean 195", "mean @50",
                          "mean last 1/6", "ms/batch/session", "compile s"], rows))

    if args.pendulum_batches > 0:
        config = pendulum_config(args)
        pkeys = session_keys(args.seed + 1, args.pendulum_sessions)
        bar = Progress(args.pendulum_batches, desc="Pendulum NPG-CG")
        res = train(config, pkeys, args.pendulum_batches,
                    progress=lambda n, m: bar.update(n, mean_return=float(np.mean(m.mean_return[:, -1]))))
        bar.close()
        m = res["metrics"]
        rand = random_policy_return(config, pkeys)
        mean = m.mean_return.mean(axis=0)
        last = max(1, mean.shape[0] // 10)
        ppng = os.path.join(out_dir, "npg_pendulum.png")
        _plot({"NPG (CG, Gaussian)": m.mean_return}, ppng,
              "Pendulum-v1: mean episode return per batch, mean and 95% CI", "episode return",
              hline=(float(rand.mean()), "random policy"))
        results["pendulum"] = {
            "config": config._asdict(),
            "mean_return": m.mean_return, "max_return": m.max_return, "step_size": m.step_size,
            "random_policy_return": float(rand.mean()),
            "random_policy_return_per_session": rand,
            "initial_return": float(mean[0]),
            "final_return": float(mean[-last:].mean()),
            "best_batch_return": float(mean.max()),
            "ms_per_batch_per_session": 1e3 * res["seconds_per_batch_per_session"],
            "compile_seconds": res["compile_seconds"],
            "png": ppng,
        }
        print(markdown_table(
            ["Pendulum", "random policy", "first batch", f"last {last} batches", "ms/batch/session",
             "compile s"],
            [["NPG-CG", float(rand.mean()), float(mean[0]), float(mean[-last:].mean()),
              1e3 * res["seconds_per_batch_per_session"], res["compile_seconds"]]]))
    return results
