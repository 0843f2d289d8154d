"""Model-based RL with a learned dynamics model (Nagabandi et al. 2018): the
settings, the transition buffer and the model trainer shared by the tasks.

The loop (`mbrl_pendulum`, `mbrl_mujoco`): collect random trajectories, fit
`f(s, a) -> s' - s`, run MPC episodes with the model (replanning every
step), add their transitions to the data set, retrain, repeat.

Nothing recompiles across aggregation iterations: the data lives in a
fixed-capacity `Buffer` (a traced `count` says how much is valid) and the
model is a traced argument of every jitted function.

References:
  A. Nagabandi, G. Kahn, R. Fearing, S. Levine (2018), "Neural network
  dynamics for model-based deep reinforcement learning with model-free
  fine-tuning", ICRA.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxctl.experiments.progress import Progress
import jaxctl.models.dynamics as dyn
import jaxctl.models.dynamics_training as dyn_train

TRAIN_CHUNK = 50  # gradient steps per jitted training call (progress granularity)


class MBRLSettings(NamedTuple):
    """Sizes of one task's experiment (the defaults are the headline HalfCheetah run).

    Attributes:
      hidden: hidden widths of the dynamics MLP (Nagabandi et al. 2018: (500,)).
      num_samples, horizon: planner candidates `K` and horizon `H`.
      episode_steps: steps per episode (random and MPC).
      random_episodes: random rollouts of the initial data set.
      iterations: data-aggregation iterations.
      mpc_episodes: MPC episodes per iteration (Pendulum; vmapped).
      epochs, retrain_epochs: passes over the data for the first fit and refits.
      batch_size, learning_rate, noise_std: Adam mini-batches, step, input noise.
      sweep_horizons, sweep_steps: horizon sweep with the final model.
      data_sizes, data_iterations, data_steps: initial-data-size study.
      open_loop_steps: length of the open-loop prediction check.
      compare_steps: > 0: compare the three planners on the final model.
    """

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
    compare_steps: int = 0


def pendulum_settings(quick: bool) -> MBRLSettings:
    """The Pendulum-v1 run (`quick`: a smoke-test size)."""
    if quick:
        return MBRLSettings(hidden=(64, 64), num_samples=128, horizon=15, episode_steps=200,
                            random_episodes=4, iterations=1, mpc_episodes=2, epochs=30,
                            retrain_epochs=20, batch_size=128, open_loop_steps=50)
    return MBRLSettings(hidden=(128, 128), num_samples=500, horizon=25, episode_steps=200,
                        random_episodes=10, iterations=3, mpc_episodes=8, epochs=100,
                        retrain_epochs=60, batch_size=256, open_loop_steps=100)


def mujoco_settings(env_name: str, quick: bool) -> MBRLSettings:
    """The HalfCheetah-v5 run (with the studies of Nagabandi et al. 2018, Figs. 5-7) or
    a short Swimmer-v5 check (`quick`: a smoke-test size)."""
    if quick:
        return MBRLSettings(hidden=(64,), num_samples=100, horizon=5, episode_steps=60,
                            random_episodes=2, iterations=1, epochs=5, retrain_epochs=5,
                            batch_size=128, sweep_horizons=(1, 5), sweep_steps=20,
                            data_sizes=(1, 2), data_iterations=1, data_steps=30,
                            open_loop_steps=30)
    if env_name == "HalfCheetah-v5":
        return MBRLSettings(num_samples=1000, horizon=20, episode_steps=1000, random_episodes=10,
                            iterations=3, epochs=40, retrain_epochs=20,
                            sweep_horizons=(1, 2, 5, 10, 20, 40), sweep_steps=300,
                            data_sizes=(1, 3, 10), data_iterations=3, data_steps=300,
                            compare_steps=300)
    return MBRLSettings(num_samples=1000, horizon=20, episode_steps=300, random_episodes=10,
                        iterations=2, epochs=40, retrain_epochs=20)


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


class ModelState(NamedTuple):
    """The dynamics model and its Adam state."""

    model: dyn.DynamicsModel
    opt_state: Any


class ModelTrainer:
    """Fits the dynamics model on a `Buffer`: refreshes the statistics, then Adam epochs.

    `initial_state(key, buffer)` initialises a model on the buffer's
    statistics; `run(state, buffer, key, epochs, callback)` trains it for
    `epochs` passes in jitted chunks of `TRAIN_CHUNK` steps, calling
    `callback(state, done_chunks, {"loss": ...})` after each, and returns the
    new state and the last mini-batch loss.
    """

    def __init__(self, settings: MBRLSettings):
        self.settings = settings
        self.optimizer = optax.adam(settings.learning_rate)
        self._stats = jax.jit(dyn.normalization_stats)
        self._init = jax.jit(lambda key, stats: dyn.dynamics_init(key, stats, settings.hidden))
        self._steps = jax.jit(
            lambda model, opt_state, data, key, count: dyn_train.dynamics_train(
                model, opt_state, data, key, self.optimizer, num_steps=TRAIN_CHUNK,
                batch_size=settings.batch_size, noise_std=settings.noise_std, count=count))

    def initial_state(self, key: jax.Array, buffer: Buffer) -> ModelState:
        model = self._init(key, self._stats(buffer.data(), buffer.count))
        return ModelState(model, self.optimizer.init(model.params))

    def chunks(self, buffer: Buffer, epochs: int) -> int:
        """Jitted calls that `run` makes for `epochs` passes over the buffer."""
        steps = max(1, epochs * buffer.count // self.settings.batch_size)
        return math.ceil(steps / TRAIN_CHUNK)

    def run(self, state: ModelState, buffer: Buffer, key: jax.Array, epochs: int,
            callback=None) -> tuple[ModelState, float]:
        data = buffer.data()
        model = state.model._replace(stats=self._stats(data, buffer.count))
        opt_state, loss = state.opt_state, float("nan")
        for i in range(self.chunks(buffer, epochs)):
            model, opt_state, log = self._steps(model, opt_state, data,
                                                jax.random.fold_in(key, i), buffer.count)
            loss = float(log.losses[-1])
            if callback is not None:
                callback(ModelState(model, opt_state), i + 1, {"loss": loss})
        return ModelState(model, opt_state), loss


def planner_budget(name: str, num_samples: int) -> tuple[int, dict]:
    """Candidates per round and options: CEM refits 3 times with K/3 candidates each, so every
    planner evaluates about K sequences per step (a fair comparison at equal model cost)."""
    if name == "cem":
        return max(1, num_samples // 3), {"num_iterations": 3}
    return num_samples, {}


def held_upright(observations, last: int = 50, tol: float = 0.5) -> float:
    """Fraction of episodes whose angle stays within `tol` rad of upright for the last steps."""
    obs = np.asarray(observations)[:, -last:]
    theta = np.arctan2(obs[..., 1], obs[..., 0])
    return float(np.mean(np.all(np.abs(theta) < tol, axis=1)))




def fit(trainer: ModelTrainer, state: ModelState, buffer: Buffer, key: jax.Array, epochs: int,
        desc: str) -> tuple[ModelState, float]:
    """`trainer.run` with a progress bar labelled `desc`."""
    with Progress(trainer.chunks(buffer, epochs), desc) as bar:
        return trainer.run(state, buffer, key, epochs,
                           lambda _, done, metrics: bar.update(done, **metrics))
