"""Training the reach network (`reach_model`): the state, its checkpoint, the trainer.

`ReachTrainer(settings)` compiles the HF step, the regime-(b) recording and
the evaluation once; `run(state, until, on_iteration=...)` advances a
`ReachState` one compiled HF step at a time (the trainer idiom shared with
`npg_sessions.SessionTrainer` and `mbrl.ModelTrainer`: settings in, an
`initial_state`, a `run` that calls back after each unit of work).

Every iteration's randomness is `fold_in(key, iteration)`, so a run resumed
from a checkpoint (`save_reach_checkpoint` / `load_reach_checkpoint`, the
`jaxctl.util.checkpoint` format with the settings and history as metadata)
continues bit for bit.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxctl.experiments.reach_model import ReachSettings, build, init_params
from jaxctl.optim.hf import HFState
from jaxctl.util.checkpoint import CheckpointError, checkpoint_metadata, restore_checkpoint, \
    save_checkpoint
from jaxctl.util.checks import PyTree
from jaxctl.util.mesh import check_divisible, replicate, shard_along

CHECKPOINT_KIND = "jaxctl-reach"
HISTORY_FIELDS = ("loss", "new_loss", "damping", "cg_steps", "rho", "accepted", "seconds")
EVAL_FIELDS = ("eval_iteration", "eval_seconds", "eval_mean_mm", "eval_max_mm", "eval_loss")


class ReachState(NamedTuple):
    """Where training stands after `iteration` completed HF steps.

    Attributes:
      params: network weights.
      hf_state: `HFState` (count, damping, warm start).
      held: regime (b)'s recorded batch (`None` in regime (a)).
      iteration: completed iterations (Python int).
      key: base PRNG key (raw uint32 `(2,)`).
      history: dict of Python lists (per-iteration stats, evaluations).
    """

    params: PyTree
    hf_state: HFState
    held: dict | None
    iteration: int
    key: jax.Array
    history: dict


def new_history() -> dict:
    """Empty per-iteration and evaluation histories."""
    return {name: [] for name in HISTORY_FIELDS + EVAL_FIELDS}


def _arrays(state: ReachState) -> dict:
    return {"params": state.params, "hf_state": state.hf_state, "held": state.held,
            "key": state.key}


def save_reach_checkpoint(path: str, state: ReachState, s: ReachSettings) -> None:
    """Writes `state` atomically to `path` (`jaxctl.util.checkpoint.save_checkpoint`).

    Raises:
      ValueError: the parameters, HF state or last loss are not finite (a
        bad state never replaces a good checkpoint).
    """
    for path_, leaf in jax.tree_util.tree_flatten_with_path(_arrays(state))[0]:
        value = np.asarray(leaf)
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise ValueError(f"refusing to checkpoint a non-finite state: "
                             f"{jax.tree_util.keystr(path_)} has non-finite entries "
                             f"(iteration {state.iteration})")
    losses = state.history.get("new_loss", [])
    if losses and not math.isfinite(losses[-1]):
        raise ValueError(f"refusing to checkpoint: the loss at iteration {state.iteration} "
                         f"is {losses[-1]}")
    save_checkpoint(path, _arrays(state), {"kind": CHECKPOINT_KIND, "settings": s._asdict(),
                                           "iteration": state.iteration,
                                           "history": state.history})


def check_reach_checkpoint(path: str, s: ReachSettings) -> dict:
    """The metadata of the reach checkpoint at `path`, checked against settings `s`.

    Raises:
      CheckpointError: missing, corrupt, not a reach checkpoint, or made with
        other settings (the message lists the differences).
    """
    meta = checkpoint_metadata(path)
    if meta.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"{path} is not a jaxctl reach checkpoint")
    saved, mine = meta["settings"], s._asdict()
    diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
    if diff:
        described = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {mine.get(k)!r}"
                              for k in diff)
        raise CheckpointError(f"the checkpoint {path} was made with other settings "
                              f"({described}); rerun with its flags or use a new --out")
    return meta


def load_reach_checkpoint(path: str, s: ReachSettings, template: ReachState) -> ReachState:
    """Reads a checkpoint of `save_reach_checkpoint` for settings `s`.

    Args:
      path: the `.npz`.
      s: the settings of the run that resumes; must equal the saved ones.
      template: a fresh `ReachState` for `s` (structure, shapes, dtypes).

    Raises:
      CheckpointError: missing or corrupt file, another kind of checkpoint,
        other settings, or a leaf that does not fit the template.
    """
    meta = check_reach_checkpoint(path, s)
    tree = restore_checkpoint(path, _arrays(template))
    return ReachState(params=tree["params"], hf_state=tree["hf_state"], held=tree["held"],
                      iteration=int(meta["iteration"]), key=tree["key"],
                      history={name: list(meta["history"][name])
                               for name in HISTORY_FIELDS + EVAL_FIELDS})


class ReachTrainer:
    """Compiles the pieces of one run once and runs HF iterations.

    `run(state, until)` advances a `ReachState`; used by the CLI, the
    notebook and the tests (which share one `ReachTrainer` per settings).
    With a `mesh` (`jaxctl.util.mesh.data_mesh`), each HF step splits its
    batch of targets over the mesh axis `axis`: XLA's partitioner turns the
    batch means of the loss, the gradient and the Gauss-Newton products into
    local sums plus all-reduces, and the result equals the one-device run
    within float32 rounding. The number of targets must be a multiple of
    the devices.
    """

    def __init__(self, s: ReachSettings, mesh: Mesh | None = None, axis: str = "data"):
        self.settings = s.validate()
        self.mesh, self.axis = mesh, axis
        if mesh is not None:
            check_divisible("the number of targets per batch",
                            self.settings.random_targets or self.settings.targets, mesh, axis)
        self.exp = build(self.settings)
        self.key = jax.random.PRNGKey(self.settings.seed)
        self._record_fn = lambda params, it: self.exp.record(
            params, self.exp.make_batch(self.key, it))
        self._step = jax.jit(self._iteration)
        self._record = jax.jit(self._record_fn)
        self._evaluate = jax.jit(self.exp.evaluate)
        self.compile_seconds = None

    def _iteration(self, params, hf_state, iteration, held):
        batch = held if held is not None else self.exp.make_batch(self.key, iteration)
        if self.mesh is not None:
            batch = shard_along(batch, self.mesh, self.axis)
        return self.exp.step(params, hf_state, batch)

    def initial_state(self) -> ReachState:
        params = init_params(jax.random.fold_in(self.key, 2**31 - 1), self.settings)
        held = None
        if self.settings.regime == "fixed-inputs":
            held = jax.eval_shape(self._record_fn, params, jnp.int32(0))
            held = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), held)
        return ReachState(params=params, hf_state=self.exp.hf.init(params), held=held,
                          iteration=0, key=self.key, history=new_history())

    def compile(self, state: ReachState) -> float:
        """Compiles step, record and evaluate ahead of time; returns seconds."""
        if self.compile_seconds is None:
            t0 = time.perf_counter()
            state = self._placed(state)
            self._step = self._step.lower(state.params, state.hf_state, jnp.int32(0),
                                          state.held).compile()
            if self.settings.regime == "fixed-inputs":
                self._record = self._record.lower(state.params, jnp.int32(0)).compile()
            ts = self._place(self.exp.targets["train"])
            self._evaluate = self._evaluate.lower(state.params, ts.state, ts.xy,
                                                  self.eval_key()).compile()
            self.compile_seconds = time.perf_counter() - t0
        return self.compile_seconds

    def eval_key(self) -> jax.Array:
        return jax.random.fold_in(self.key, 2**31 - 2)

    def evaluate(self, params, name: str = "train") -> dict:
        ts = self._place(self.exp.targets[name])
        return jax.device_get(self._evaluate(self._place(params), ts.state, ts.xy,
                                             self.eval_key()))

    def _place(self, tree):
        """`tree` replicated on the mesh (unchanged without one), so the compiled
        pieces always see the placement they were compiled for."""
        return tree if self.mesh is None else replicate(tree, self.mesh)

    def _placed(self, state: ReachState) -> ReachState:
        return state._replace(params=self._place(state.params),
                              hf_state=self._place(state.hf_state), held=self._place(state.held))

    def run(self, state: ReachState, until: int, *, eval_every: int = 5,
            callback=None) -> ReachState:
        """Advances `state` to `until` completed iterations.

        Each iteration is one compiled HF step (regime (b) re-records the
        inputs every `hold` iterations). `callback(state, done, metrics)` is
        called after every iteration (progress, checkpoints), `metrics` a
        dict of floats (loss, damping, CG steps, the last evaluated mean hand
        error in mm); a `KeyboardInterrupt` leaves the last completed state
        in `self.last`.
        """
        self.compile(state)
        state = self._placed(state)
        s = self.settings
        self.last = state
        while state.iteration < until:
            it = state.iteration
            t0 = time.perf_counter()
            held = state.held
            if s.regime == "fixed-inputs" and it % s.hold == 0:
                held = self._place(self._record(state.params, jnp.int32(it)))
            params, hf_state, stats = self._step(state.params, state.hf_state, jnp.int32(it), held)
            stats = jax.device_get(stats)
            seconds = time.perf_counter() - t0
            hist = {k: list(v) for k, v in state.history.items()}
            total = (hist["seconds"][-1] if hist["seconds"] else 0.0) + seconds
            for name, value in (("loss", stats.loss), ("new_loss", stats.new_loss),
                                ("damping", stats.damping), ("cg_steps", stats.cg_steps),
                                ("rho", stats.rho), ("accepted", stats.accepted),
                                ("seconds", total)):
                hist[name].append(float(value))
            if eval_every and ((it + 1) % eval_every == 0 or it + 1 == until):
                ev = self.evaluate(params)
                hist["eval_iteration"].append(it + 1)
                hist["eval_seconds"].append(total)
                hist["eval_mean_mm"].append(float(np.mean(ev["hand_error_mm"])))
                hist["eval_max_mm"].append(float(np.max(ev["hand_error_mm"])))
                hist["eval_loss"].append(float(ev["loss"]))
            state = ReachState(params, hf_state, held if s.regime == "fixed-inputs" else None,
                               it + 1, state.key, hist)
            self.last = state
            if callback is not None:
                mm = hist["eval_mean_mm"][-1] if hist["eval_mean_mm"] else float("nan")
                callback(state, state.iteration, {"loss": float(stats.new_loss),
                                                  "damping": float(stats.damping),
                                                  "cg": int(stats.cg_steps), "mm": mm})
        return state


_TRAINERS: dict[tuple, ReachTrainer] = {}


def get_trainer(s: ReachSettings, mesh: Mesh | None = None) -> ReachTrainer:
    """A `ReachTrainer` for `s` (and `mesh`), cached so that repeated runs in one
    process (tests, notebooks, resume after Ctrl-C) compile once."""
    s = s.validate()
    if (s, mesh) not in _TRAINERS:
        _TRAINERS[(s, mesh)] = ReachTrainer(s, mesh)
    return _TRAINERS[(s, mesh)]
