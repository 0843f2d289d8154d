"""`jaxctl spiking`: the conversion story of DeWolf (2020) on the 8x8 digits
(`jaxctl.experiments.spiking_digits_study`), then a spiking CartPole
controller (`jaxctl.experiments.spiking_cartpole`); prints the tables,
writes the PNGs."""

from __future__ import annotations

import argparse
import os
from typing import Any

import jax
import numpy as np

import jaxctl.apps.spiking_plots as splots
from jaxctl.apps.common import markdown_table
from jaxctl.apps.flags import UsageError, integer, real
from jaxctl.experiments.progress import Progress
from jaxctl.experiments.spiking_digits import SpikingSettings, load_digits_split, probe
from jaxctl.experiments.spiking_digits_study import DigitsStudySettings, run_study

TASKS = ("digits", "cartpole", "all")


def _tau(text: str) -> float | None:
    """A synapse time constant in seconds, >= 0, or `none`."""
    if text.strip().lower() == "none":
        return None
    return real(0)(text)


_tau.__name__ = "tau"  # argparse names the type in "invalid tau value"


class _Unset:
    """The default of the study's flags: the value of `DigitsStudySettings` (or its `quick()`).

    Not None (`--tau none` is a value) and not a string (argparse would parse it).
    """

    def __repr__(self) -> str:
        return "the study's"


_UNSET = _Unset()

# flag -> (type, help); unset flags take the study's value (its quick() value under --quick),
# so explicit flags win over --quick.
_STUDY_FLAGS = {
    "seeds": (integer(1), "training seeds (5; --quick: 2)"),
    "epochs": (integer(1), "Adam epochs of the rate training (20; --quick: 4)"),
    "steps": (integer(1), "default presentation time per image, in 1 ms steps (50)"),
    "scale": (real(0, low_open=True), "default firing-rate scale of the conv layer (200)"),
    "tau": (_tau, "default low-pass synapse (s) on input->conv and conv->dense, or none (0.01)"),
    "window": (integer(1), "the alternative read-out averages the last WINDOW steps (10)"),
}
_SWEEP_FLAGS = {
    "presentation_steps": (integer(1), "presentation times swept (steps)"),
    "taus": (_tau, "synapse time constants swept (s, or none)"),
    "scales": (real(0, low_open=True), "firing-rate scales swept"),
    "rate_weights": (real(0, low_open=True),
                     "weights of the firing-rate penalty (200-300 Hz) of the regularised networks"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `jaxctl spiking`."""
    parser.add_argument("--task", choices=TASKS, default="all",
                        help="digits (DeWolf 2020), cartpole (a spiking controller), or both")
    for name, (kind, help_text) in _STUDY_FLAGS.items():
        parser.add_argument("--" + name, type=kind, default=_UNSET, help=help_text)
    for name, (kind, help_text) in _SWEEP_FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=kind, nargs="+", default=_UNSET,
                            help=help_text)


def study_settings(args: argparse.Namespace) -> DigitsStudySettings:
    """The digits study of the flags: the study's (quick) values, explicit flags on top."""
    base = DigitsStudySettings.quick() if args.quick else DigitsStudySettings()
    spiking = base.spiking
    for flag, field in (("steps", "n_steps"), ("scale", "scale"), ("tau", "tau")):
        value = getattr(args, flag)
        if value is not _UNSET:  # `--tau none` sets None
            spiking = spiking._replace(**{field: value})
    updates: dict[str, Any] = {"spiking": spiking}
    if args.epochs is not _UNSET:
        updates["train"] = base.train._replace(epochs=args.epochs)
    for name in ("seeds", "window", *_SWEEP_FLAGS):
        value = getattr(args, name)
        if value is not _UNSET:
            updates[name] = tuple(value) if isinstance(value, list) else value
    return base._replace(**updates)


def prepare(args: argparse.Namespace) -> None:
    """Writes the resolved study values back into the flags (results.json records them)."""
    study = study_settings(args)
    if study.seeds < 2:
        raise UsageError("--seeds: at least 2 seeds are needed for a confidence interval")
    args.seeds, args.epochs, args.window = study.seeds, study.train.epochs, study.window
    args.steps, args.scale, args.tau = (study.spiking.n_steps, study.spiking.scale,
                                        study.spiking.tau)
    for name in _SWEEP_FLAGS:
        setattr(args, name, list(getattr(study, name)))


def _print_tables(res: dict) -> None:
    def pct(summary):
        return f"{100 * summary['mean']:.2f} ± {100 * summary['ci95']:.2f}"

    d = res["default_settings"]
    print(f"\ndigits: rate {pct(res['rate_accuracy'])} %, spiking {pct(res['spiking_accuracy'])} %"
          f" (last step; mean of last {d['window']}: {pct(res['spiking_accuracy_window'])} %) at "
          f"{d['n_steps']} steps, tau {d['tau']}, scale {d['scale']:g}; gap "
          f"{res['gap_points']:.2f} points; {res['images_per_second']:.0f} images/s")
    rows = []
    for name, key in (("presentation (untuned)", "n_steps"), ("presentation", "n_steps"),
                      ("tau", "tau"), ("scale", "scale")):
        sweep = res["sweeps"][name.split()[0] + ("_untuned" if "untuned" in name else "")]
        rows += [[name, r["setting"][key], pct(r["accuracy"]), r["spikes_per_image"]]
                 for r in sweep]
    for reg in res["sweeps"]["regularised"]:
        rows += [[f"regularised w={reg['setting']['rate_weight']:g} (rate "
                  f"{pct(reg['rate_accuracy'])})", f"scale {r['setting']['scale']:g}",
                  pct(r["accuracy"]), r["spikes_per_image"]] for r in reg["spiking"]]
    print(markdown_table(["sweep", "setting", "accuracy % (95% CI)", "conv spikes / image"], rows))
    stats = res["no_spikes"]["seed0"]
    print(f"untuned network (seed 0): max conv rate {stats['max_rate_hz']:.2f} Hz, first spike "
          f"after {stats['steps_to_first_spike']} steps at the earliest")


class _Bar:
    """A `progress(done, total, **metrics)` callback that opens its bar at the first call."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def __call__(self, done: int, total: int, **metrics) -> None:
        if self.bar is None:
            self.bar = Progress(total, self.desc)
        self.bar.update(done, **metrics)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _digits(args, out_dir: str) -> dict:
    study = study_settings(args)
    bar = _Bar("digits")
    try:
        res, params = run_study(study, bar, return_params=True)
    finally:
        bar.close()
    _print_tables(res)
    data = load_digits_split()
    p0 = jax.tree.map(lambda a: a[0], params)
    default = study.spiking
    images = data.x_test[:4]
    untuned, _ = probe(p0, images, SpikingSettings(n_steps=30, dt=default.dt))
    tuned, _ = probe(p0, images, default)
    pngs = [splots.raster([("untuned, scale 1, 30 steps", untuned),
                           (f"scale {default.scale:g}, tau {default.tau}, {default.n_steps} steps",
                            tuned)], os.path.join(out_dir, "spiking_raster.png"))]
    outputs = {("no synapse" if r["setting"]["tau"] is None else
                f"tau {1e3 * r['setting']['tau']:g} ms"): np.asarray(r["output_image0_seed0"])
               for r in res["sweeps"]["tau"]}
    pngs.append(splots.output_over_time(outputs, res["label_image0"],
                                        os.path.join(out_dir, "spiking_output.png"), default.dt))
    pngs.append(splots.accuracy_curves(res, os.path.join(out_dir, "spiking_accuracy.png")))
    res["pngs"] = pngs
    return res


def run(args, out_dir: str) -> dict:
    """Runs the digits study and/or the CartPole study; returns the results."""
    results: dict[str, Any] = {}
    if args.task in ("digits", "all"):
        results.update(_digits(args, out_dir))
    if args.task in ("cartpole", "all"):
        from jaxctl.apps.spiking_cartpole_plot import cartpole_plot
        from jaxctl.experiments.spiking_cartpole import CartpoleSpikingSettings
        from jaxctl.experiments.spiking_cartpole import run_study as cartpole_study

        settings = CartpoleSpikingSettings.quick() if args.quick else CartpoleSpikingSettings()
        bar = _Bar("cartpole")
        try:
            cartpole = cartpole_study(settings, bar)
        finally:
            bar.close()
        cartpole["png"] = cartpole_plot(cartpole, os.path.join(out_dir, "spiking_cartpole.png"))
        results["cartpole"] = cartpole
    return results
