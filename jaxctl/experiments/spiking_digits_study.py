"""The whole digits study of DeWolf (2020): train, convert, sweep, over several seeds.

`run_study(DigitsStudySettings())` trains `seeds` rate networks (one
jitted program), measures the rate accuracy, then the spiking accuracy on
the full held-out set at the default settings and in four sweeps, each
varying one setting around the default: presentation time (also for the
untuned network, scale 1 and no synapses, with the spike counts its rates
predict), synapse tau, firing-rate scale, and networks trained with the
firing-rate penalty. Every accuracy is a mean over seeds with a 95%
Student-t interval.

References:
  T. DeWolf (2020), "Converting your Keras model into a spiking neural
  network", studywolf blog.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from jaxctl.experiments.npg_sessions import confidence_interval
from jaxctl.experiments.spiking_digits import (SpikingSettings, TrainSettings, evaluate_spiking,
                                               load_digits_split, rate_accuracy, rate_statistics,
                                               readout_accuracy, train)


class DigitsStudySettings(NamedTuple):
    """Sizes and settings of the study (`quick()` gives a tiny version).

    Attributes:
      seeds, seed: number of training seeds, the first one.
      train: the plain rate training.
      spiking: the default conversion (presentation, synapse, scale).
      window: the alternative read-out, the mean of the last `window` steps.
      presentation_steps, taus, scales: the sweeps.
      rate_weights: penalty weights of the rate-regularised networks (trained
        as `train` with `rate_weight` and `rate_unit`).
      rate_unit: `TrainSettings.rate_unit` of the regularised networks.
      regularised_scales: scales at which they are run.
    """
    seeds: int = 5
    seed: int = 0
    train: TrainSettings = TrainSettings()
    spiking: SpikingSettings = SpikingSettings(n_steps=50, tau=0.01, scale=200.0)
    window: int = 10
    presentation_steps: tuple[int, ...] = (10, 20, 30, 50, 100, 200, 500, 1000)
    taus: tuple[float | None, ...] = (None, 0.001, 0.002, 0.005, 0.01)
    scales: tuple[float, ...] = (1.0, 5.0, 20.0, 50.0, 100.0, 200.0, 500.0)
    rate_weights: tuple[float, ...] = (0.001, 0.01)
    rate_unit: float = 100.0
    regularised_scales: tuple[float, ...] = (1.0, 5.0)

    @classmethod
    def quick(cls) -> "DigitsStudySettings":
        """A tiny study for smoke tests (a few seconds of compute)."""
        # sweep points that repeat the default, or each other, reuse a compiled program
        return cls(seeds=2, train=TrainSettings(epochs=4), presentation_steps=(30,),
                   taus=(None, 0.01), scales=(1.0, 200.0), rate_weights=(0.01,),
                   regularised_scales=(1.0,))


def _summary(per_seed) -> dict[str, Any]:
    per_seed = np.asarray(per_seed, dtype=np.float64)
    mean, half = confidence_interval(per_seed)
    return {"mean": float(mean), "ci95": float(half), "per_seed": per_seed.tolist()}


def _record(setting: dict, ev, window_accuracy=None) -> dict[str, Any]:
    rec = {"setting": setting, "accuracy": _summary(ev.accuracy),
           "spikes_per_image": float(ev.spikes_per_image.mean()),
           "active_fraction": float(ev.active_fraction.mean())}
    if window_accuracy is not None:
        rec["window_accuracy"] = _summary(window_accuracy)
    return rec


def run_study(settings: DigitsStudySettings = DigitsStudySettings(),
              progress: Callable | None = None, return_params: bool = False):
    """Trains, converts and sweeps; returns a JSON-able dict of figures.

    Args:
      settings: the study.
      progress: optional `progress(done, total, **metrics)`, called after each
        training and each evaluated setting.
      return_params: also return the plain networks' parameters (leading
        seed axis), for plots: `(results, params)`.

    Returns:
      `rate_accuracy`, `spiking_accuracy` (default settings, last-step
      read-out) and `spiking_accuracy_window` (mean of the last `window`
      steps), each `{mean, ci95, per_seed}` as fractions; `gap_points`
      (rate minus spiking, percentage points) and `goal_met` (gap <= 1 point
      at <= 50 steps); `no_spikes` (rate statistics of the untuned network);
      `sweeps` (`presentation_untuned`, `presentation`, `tau`, `scale`,
      `regularised`: lists of `{setting, accuracy, ...}`); timings and
      `images_per_second` of the jitted spiking evaluation.
    """
    s = settings
    data = load_digits_split()
    x, y = data.x_test, data.y_test
    seeds = tuple(range(s.seed, s.seed + s.seeds))
    default = s.spiking
    total = 1 + len(s.rate_weights) + 1 + 2 * len(s.presentation_steps) + len(s.taus) \
        + len(s.scales) + len(s.rate_weights) * len(s.regularised_scales)
    done = [0]

    def tick(**metrics):
        done[0] += 1
        if progress is not None:
            progress(done[0], total, **metrics)

    def rate_acc(params):
        return np.array([rate_accuracy(jax.tree.map(lambda a, i=i: a[i], params), x, y)
                         for i in range(len(seeds))])

    start = time.perf_counter()
    params, losses = jax.block_until_ready(train(data, s.train, seeds))
    train_seconds = time.perf_counter() - start
    rate = rate_acc(params)
    tick(rate_accuracy=float(rate.mean()))

    start = time.perf_counter()
    ev = evaluate_spiking(params, x, y, default)
    compile_and_run = time.perf_counter() - start
    start = time.perf_counter()
    ev = evaluate_spiking(params, x, y, default)
    eval_seconds = time.perf_counter() - start
    window_acc = readout_accuracy(ev.output, y, min(s.window, default.n_steps))
    tick(spiking_accuracy=float(ev.accuracy.mean()))

    sweeps: dict[str, Any] = {"presentation_untuned": [], "presentation": [], "tau": [],
                              "scale": [], "regularised": []}
    untuned = SpikingSettings(dt=default.dt)
    p0 = jax.tree.map(lambda a: a[0], params)
    stats = rate_statistics(p0, x, s.presentation_steps, default.dt)
    for n in s.presentation_steps:
        for name, base in (("presentation_untuned", untuned), ("presentation", default)):
            e = evaluate_spiking(params, x, y, base._replace(n_steps=n))
            rec = _record({"n_steps": n}, e, readout_accuracy(e.output, y, min(s.window, n)))
            if name == "presentation_untuned":
                rec["predicted_active_fraction_seed0"] = stats["fraction_can_spike"][n]
                rec["predicted_spikes_per_image_seed0"] = stats["predicted_spikes_per_image"][n]
                rec["spikes_per_image_seed0"] = float(e.spikes_per_image[0])
            sweeps[name].append(rec)
            tick(**{name: float(e.accuracy.mean())})
    for tau in s.taus:
        e = evaluate_spiking(params, x, y, default._replace(tau=tau))
        rec = _record({"tau": tau}, e)
        rec["output_image0_seed0"] = e.output[0, 0]  # (n_steps, 10), for the output-over-time plot
        sweeps["tau"].append(rec)
        tick(tau=float(e.accuracy.mean()))
    for scale in s.scales:
        e = evaluate_spiking(params, x, y, default._replace(scale=float(scale)))
        sweeps["scale"].append(_record({"scale": float(scale)}, e))
        tick(scale=float(e.accuracy.mean()))

    for weight in s.rate_weights:
        reg_settings = s.train._replace(rate_weight=float(weight), rate_unit=float(s.rate_unit))
        reg, _ = jax.block_until_ready(train(data, reg_settings, seeds))
        reg_rate = rate_acc(reg)
        rs = rate_statistics(jax.tree.map(lambda a: a[0], reg), x, (default.n_steps,), default.dt)
        tick(regularised_rate_accuracy=float(reg_rate.mean()))
        runs = []
        for scale in s.regularised_scales:
            e = evaluate_spiking(reg, x, y, default._replace(scale=float(scale)))
            runs.append(_record({"scale": float(scale)}, e))
            tick(regularised=float(e.accuracy.mean()))
        sweeps["regularised"].append({
            "setting": {"rate_weight": float(weight), "rate_unit": float(s.rate_unit),
                        "band_hz": [s.train.rate_low, s.train.rate_high]},
            "rate_accuracy": _summary(reg_rate),
            "rates_seed0": {k: rs[k] for k in ("max_rate_hz", "mean_rate_hz", "active_fraction")},
            "spiking": runs})

    gap = 100.0 * (rate.mean() - ev.accuracy.mean())
    results = {
        "rate_accuracy": _summary(rate),
        "spiking_accuracy": _summary(ev.accuracy),
        "spiking_accuracy_window": _summary(window_acc),
        "default_settings": {**default._asdict(), "readout": "last step", "window": s.window},
        "gap_points": float(gap),
        "goal_met": bool(gap <= 1.0 and default.n_steps <= 50),
        "spikes_per_image": float(ev.spikes_per_image.mean()),
        "no_spikes": {"seed0": stats, "dt": default.dt,
                      "rule": "a neuron at rate r (Hz) spikes within T steps iff r*T*dt >= 1"},
        "sweeps": sweeps,
        "train_loss_last_epoch": _summary(np.asarray(losses)[:, -1]),
        "train_seconds": train_seconds,
        "eval_compile_seconds": compile_and_run - eval_seconds,
        "eval_seconds": eval_seconds,
        "images_per_second": len(seeds) * x.shape[0] / eval_seconds,
        "n_test": int(x.shape[0]), "n_train": int(data.x_train.shape[0]),
        "label_image0": int(y[0]),
        "seeds": list(seeds),
    }
    return (results, params) if return_params else results
