"""Natural policy gradient sessions on gymnax CartPole-v1 and Pendulum-v1.

The experiment of DeWolf (2018), "Natural policy gradient in TensorFlow": a
softmax policy on CartPole with 200-step episodes, batches of exactly 200
time steps (as many episodes as fit, the last one cut by the batch end), a
value network as the baseline of the advantages, the max reward per batch,
natural policy gradient (Rajeswaran et al. 2017) against vanilla policy
gradient with everything else equal.

Every session of one variant runs in ONE jitted program: the sessions are a
`vmap` axis (one PRNG key each), batches a `lax.scan` inside it, in chunks
of a few batches (`SessionTrainer`) so the caller can show progress; the
chunk function compiles once.

"Max reward per batch" is the largest undiscounted return among the
episodes of the batch, the episode cut by the batch end counted with the
steps it got; 200 means the first episode balanced the pole for the whole
batch (DeWolf 2018 computes it the same way).

References:
  T. DeWolf (2018), "Natural policy gradient in TensorFlow", studywolf blog.
  A. Rajeswaran, K. Lowrey, E. Todorov, S. Kakade (2017), "Towards
  generalization and simplicity in continuous control", NeurIPS.
"""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, PartitionSpec

from jaxctl.control.rl import episode_ends, episode_stats, gae, rollout, score_gradient
from jaxctl.core.fisher import fisher_operator
from jaxctl.core.jacobians import per_sample_grads
from jaxctl.experiments.policy_noise import policy_sampler
from jaxctl.models.policies import categorical_policy, gaussian_policy, value_function
from jaxctl.optim.npg import npg
from jaxctl.util.checks import PyTree
from jaxctl.util.mesh import shard_along

class NPGSettings(NamedTuple):
    """Static settings of one training variant (hashable; a new value recompiles).

    Attributes:
      env_name: gymnax environment, `"CartPole-v1"` or `"Pendulum-v1"`.
      num_steps: time steps per batch and environment (DeWolf 2018: 200).
      num_envs: environments per batch (CartPole: 1, as DeWolf 2018).
      max_episode_steps: time limit of an episode (DeWolf 2018: 200).
      algo: `"npg"` (normalized natural gradient) or `"pg"` (Adam on the
        surrogate, the vanilla policy gradient).
      delta: NPG trust-region size `step^T M step` (DeWolf 2018: 0.001).
      rel_damping, damping: NPG Tikhonov damping `lambda = damping +
        rel_damping * max eig(F)`; 0 and 0 is the pseudo-inverse of DeWolf (2018).
      rtol: pseudo-inverse eigenvalue cut-off (DeWolf 2018: 1e-6).
      fisher: `"dense"` (scores, SVD) or `"cg"` (matrix-free `fisher_operator`
        + CG).
      method: dense solver of `jaxctl.core.fisher.natural_gradient` (`"eigh"`
        of the P x P Fisher is the cheap one for a small damped policy).
      cg_maxiter: CG iterations for `fisher="cg"` (mjrl: 10).
      pg_lr: Adam learning rate of the vanilla PG (DeWolf 2018: 0.01).
      policy_hidden: hidden widths of the policy MLP (`()` = DeWolf's (2018)
        linear softmax policy).
      policy_activation: hidden activation of the policy MLP (`"relu"` for a
        policy that runs as spiking neurons, DeWolf 2020).
      policy_output_scale: initial scale of the policy's last layer.
      log_std_init: Gaussian policy's initial log standard deviation.
      value_hidden, value_activation: value MLP (DeWolf 2018: (10,), relu).
      value_lr, value_epochs: Adam steps on the value loss per batch (DeWolf 2018:
        0.1, 1).
      gamma, lam: discount and GAE lambda (DeWolf 2018: 0.97 and Monte-Carlo,
        lam = 1).
      bootstrap: bootstrap the value after episodes cut by the time limit or
        the batch end (DeWolf 2018: no, a cut episode's return stops there).
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
    method: str = "auto"
    cg_maxiter: int = 10
    pg_lr: float = 0.01
    policy_hidden: tuple[int, ...] = ()
    policy_activation: str = "tanh"
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


def make_env(settings: NPGSettings):
    """The gymnax environment and its parameters with the configured time limit."""
    import gymnax

    env, env_params = gymnax.make(settings.env_name)
    env_params = env_params.replace(max_steps_in_episode=settings.max_episode_steps)
    return env, env_params


def make_policy_value(settings: NPGSettings, env, env_params):
    """The policy (categorical for a discrete action space, else Gaussian) and value MLPs."""
    obs_dim = int(np.prod(env.observation_space(env_params).shape))
    space = env.action_space(env_params)
    if not hasattr(space, "n"):  # continuous (Box) actions
        action_dim = int(np.prod(space.shape)) or 1
        scale = float(np.max(np.abs(np.asarray(space.high))))
        policy = gaussian_policy(obs_dim, action_dim, settings.policy_hidden,
                                 activation=settings.policy_activation,
                                 output_scale=settings.policy_output_scale,
                                 log_std_init=settings.log_std_init, action_scale=scale)
    else:
        policy = categorical_policy(obs_dim, int(env.num_actions), settings.policy_hidden,
                                    activation=settings.policy_activation,
                                    output_scale=settings.policy_output_scale)
    value = value_function(obs_dim, settings.value_hidden, activation=settings.value_activation)
    return policy, value


def make_session(settings: NPGSettings):
    """Pure `init(key) -> SessionState` and `step(state) -> (state, BatchMetrics)`.

    One `step` is one batch: rollout (`num_envs` x `num_steps`), advantages
    from the current value network, the policy update (NPG or Adam PG), then
    `value_epochs` Adam steps of the value network on the value targets.
    Both are per-session; `vmap` them over a batch of keys for many
    sessions.
    """
    if settings.algo not in ("npg", "pg"):
        raise ValueError(f"algo must be 'npg' or 'pg', got {settings.algo!r}")
    env, env_params = make_env(settings)
    policy, vf = make_policy_value(settings, env, env_params)
    if settings.algo == "npg":
        policy_tx = npg(settings.delta, fisher=settings.fisher, rtol=settings.rtol,
                        damping=settings.damping, rel_damping=settings.rel_damping,
                        method=settings.method, cg_maxiter=settings.cg_maxiter)
    else:
        policy_tx = optax.adam(settings.pg_lr)
    value_tx = optax.adam(settings.value_lr)

    def init(key):
        k_pi, k_v, k_run = jax.random.split(key, 3)
        pi_params = policy.init(k_pi)
        v_params = vf.init(k_v)
        return SessionState(pi_params, v_params, policy_tx.init(pi_params), value_tx.init(v_params),
                            k_run, jnp.zeros_like(jax.random.key_data(key)[..., 0], jnp.int32))

    act, noise = policy_sampler(policy, env, env_params)

    def collect(pi_params, key):
        keys = jax.random.split(key, settings.num_envs)
        return jax.vmap(lambda k: rollout(env, env_params, act, pi_params, k, settings.num_steps,
                                          noise=noise)[0])(keys)

    def advantages(v_params, traj):
        values = jax.vmap(jax.vmap(lambda o: vf.apply(v_params, o)))(traj.obs)
        next_values = jax.vmap(jax.vmap(lambda o: vf.apply(v_params, o)))(traj.next_obs)
        ends = jax.vmap(episode_ends)(traj)
        # Without bootstrapping (DeWolf 2018), a cut episode's return stops at the cut.
        stop = traj.terminated if settings.bootstrap else ends
        rewards = traj.rewards * settings.reward_scale
        return jax.vmap(lambda r, v, nv, s, e: gae(r, v, nv, s, e, settings.gamma, settings.lam))(
            rewards, values, next_values, stop, ends)

    def step(state):
        key, k_roll = jax.random.split(state.key)
        traj = collect(state.policy, k_roll)
        adv, targets = advantages(state.value, traj)
        flat = lambda x: x.reshape((-1,) + x.shape[2:])
        obs, actions, adv_f, targets_f = flat(traj.obs), flat(traj.actions), flat(adv), flat(targets)

        # Policy update: loss gradient u = -g, g = 1/T sum_t score_t A_t.
        if settings.algo == "npg" and settings.fisher == "dense":
            scores = per_sample_grads(policy.log_prob, state.policy, obs, actions)
            grads = jax.tree.map(jnp.negative, score_gradient(scores, adv_f))
            updates, policy_opt = policy_tx.update(grads, state.policy_opt, state.policy,
                                                   scores=scores)
        else:
            def surrogate(p):
                logp = jax.vmap(policy.log_prob, in_axes=(None, 0, 0))(p, obs, actions)
                return -jnp.mean(logp * adv_f)

            grads = jax.grad(surrogate)(state.policy)
            if settings.algo == "npg":
                fvp = fisher_operator(policy.log_prob, state.policy, obs, actions)
                updates, policy_opt = policy_tx.update(grads, state.policy_opt, state.policy,
                                                       fvp=fvp)
            else:
                updates, policy_opt = policy_tx.update(grads, state.policy_opt, state.policy)
        pi_params = optax.apply_updates(state.policy, updates)
        step_size = policy_opt.step_size if settings.algo == "npg" else jnp.zeros((), jnp.float32)

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
        v_params, value_opt = lax.fori_loop(0, settings.value_epochs, value_epoch,
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


def make_train(settings: NPGSettings, chunk: int, mesh: Mesh | None = None, axis: str = "data"):
    """Jitted, session-vmapped `init(keys)` and `run_chunk(states) -> (states, metrics)`.

    `run_chunk` advances every session by `chunk` batches (a `lax.scan`);
    the metrics have shape (sessions, chunk). With a `mesh`, the sessions
    (a multiple of the devices along `axis`) are split over the devices by
    `jax.shard_map`: each device runs its own sessions, with no
    communication; results equal the one-device run.
    """
    init, step = make_session(settings)

    def scan_chunk(state):
        return lax.scan(lambda s, _: step(s), state, None, length=chunk)

    init, scan_chunk = jax.vmap(init), jax.vmap(scan_chunk)
    if mesh is not None:
        spec = PartitionSpec(axis)
        init = jax.shard_map(init, mesh=mesh, in_specs=spec, out_specs=spec)
        scan_chunk = jax.shard_map(scan_chunk, mesh=mesh, in_specs=spec, out_specs=spec)
    return jax.jit(init), jax.jit(scan_chunk)


def session_keys(seed: int, sessions: int) -> jax.Array:
    """One PRNG key per session, split from `PRNGKey(seed)`."""
    return jax.random.split(jax.random.PRNGKey(seed), sessions)


def group_keys(seed: int, groups: int, sessions: int) -> jax.Array:
    """`groups * sessions` keys: group g holds `session_keys(seed + g, sessions)`."""
    return jnp.concatenate([session_keys(seed + g, sessions) for g in range(groups)])


class SessionTrainer:
    """Runs `len(keys)` sessions of `settings` vmapped in one program, `chunk` batches a call.

    `initial_state(keys)` gives the vmapped `SessionState`; `run(state,
    num_batches, callback)` advances it, calling `callback(state, done,
    metrics)` after every chunk (`metrics`: the chunk's `BatchMetrics`,
    shape `(sessions, chunk)`), and returns the final state and a `log`:
    `metrics` (numpy `BatchMetrics`, shape `(sessions, num_batches)`),
    `compile_seconds` (first chunk minus one steady chunk), `chunk_seconds`
    (every chunk after the first), `seconds_per_batch_per_session` (median
    steady chunk / (chunk * sessions)), its minimum counterpart, `chunk`.
    With a `mesh`, the sessions are split over its `"data"` axis (`make_train`).
    """

    def __init__(self, settings: NPGSettings, chunk: int, mesh: Mesh | None = None):
        self.settings, self.chunk, self.mesh = settings, chunk, mesh
        self.init_fn, self.chunk_fn = make_train(settings, chunk, mesh)  # the jitted pieces
        self.init_seconds = None

    def initial_state(self, keys: jax.Array) -> SessionState:
        t0 = time.perf_counter()
        if self.mesh is not None:
            keys = shard_along(keys, self.mesh)
        state = jax.block_until_ready(self.init_fn(keys))
        self.init_seconds = time.perf_counter() - t0
        return state

    def run(self, state: SessionState, num_batches: int, callback=None):
        if num_batches % self.chunk:
            raise ValueError(f"num_batches ({num_batches}) must be a multiple of chunk "
                             f"({self.chunk})")
        sessions = jax.tree.leaves(state)[0].shape[0]
        parts, times = [], []
        for i in range(num_batches // self.chunk):
            t0 = time.perf_counter()
            state, metrics = jax.block_until_ready(self.chunk_fn(state))
            times.append(time.perf_counter() - t0)
            parts.append(jax.tree.map(np.asarray, metrics))
            if callback is not None:
                callback(state, (i + 1) * self.chunk, parts[-1])
        metrics = jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *parts)
        steady = times[1:] if len(times) > 1 else times
        per_chunk = float(np.median(steady))
        return state, {
            "metrics": metrics,
            "init_seconds": self.init_seconds,
            "first_chunk_seconds": times[0],
            "compile_seconds": max(times[0] - per_chunk, 0.0),
            "chunk_seconds": steady,
            "seconds_per_batch_per_session": per_chunk / (self.chunk * sessions),
            "min_seconds_per_batch_per_session": float(np.min(steady)) / (self.chunk * sessions),
            "chunk": self.chunk,
        }


def default_chunk(num_batches: int) -> int:
    """A chunk size that divides `num_batches` into at least two chunks when it can."""
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


def random_policy_return(settings: NPGSettings, keys: jax.Array, episodes: int = 10) -> np.ndarray:
    """Mean undiscounted episode return of uniformly random actions (one per key)."""
    env, env_params = make_env(settings)
    space = env.action_space(env_params)

    def act(_, key, obs):
        # In the observations' dtype: under jax_enable_x64 gymnax's state is
        # float64 while the space samples float32, and the state would change
        # dtype at the first step.
        return space.sample(key).astype(obs.dtype)

    def one(key):
        traj, _ = rollout(env, env_params, act, None, key, settings.max_episode_steps * episodes)
        return episode_stats(traj.rewards, episode_ends(traj)).mean_return

    return np.asarray(jax.jit(jax.vmap(one))(keys))


