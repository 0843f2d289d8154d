"""`jaxctl reach`, the project's main job: train the recurrent network of
DeWolf (2016) by Hessian-free through the exact closed loop to drive the
2-link arm to 64 targets (`jaxctl.experiments.reach_model`, `reach_train`).

The command parses and checks its flags (before anything is written),
trains or resumes, writes `checkpoint.npz` every `--checkpoint-every`
iterations, at the end and on Ctrl-C, then evaluates, plots and prints the
summary. `--resume` continues bit for bit.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

import jaxctl.apps.common as _common
import jaxctl.apps.plots as plots
from jaxctl.apps.flags import UsageError, check_devices, integer, real
import jaxctl.envs.reach_task as rt
from jaxctl.experiments.progress import Progress
from jaxctl.experiments.reach_model import DEFAULT_ALPHA, ReachSettings
from jaxctl.experiments.reach_train import ReachTrainer, ReachState, check_reach_checkpoint, \
    get_trainer, load_reach_checkpoint, save_reach_checkpoint
from jaxctl.util.checkpoint import CheckpointError
from jaxctl.util.mesh import data_mesh

CHECKPOINT_NAME = "checkpoint.npz"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `jaxctl reach`."""
    parser.add_argument("--hidden", type=integer(1), default=None,
                        help="units per tanh layer (DeWolf 2016: 32, Sutskever 2013: 100; "
                             "--quick: 16)")
    parser.add_argument("--steps", type=integer(2), default=None,
                        help="time steps per reach T (DeWolf 2016: 40, Sutskever 2013: 100)")
    parser.add_argument("--targets", type=integer(1), default=None,
                        help="training targets on the 0.075 m circle (default 64; --quick: 16)")
    parser.add_argument("--regime", choices=("closed", "fixed-inputs"), default="closed",
                        help="(a) closed: roll out + one HF step per iteration; (b) fixed-inputs: "
                             "record the network inputs, hold them for --hold HF steps")
    parser.add_argument("--hold", type=integer(1), default=32,
                        help="HF steps per recorded rollout in (b)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed (weights, targets, noise)")
    parser.add_argument("--iterations", type=integer(1), default=None,
                        help="HF iterations (default 150; --quick: 40)")
    parser.add_argument("--cg-maxiter", type=integer(1), default=50, help="CG budget per HF step")
    parser.add_argument("--damping", type=real(1e-8, 1e8), default=1e-3,
                        help="initial Levenberg-Marquardt damping (the loss is a mean over targets: "
                             "start small; it adapts both ways)")
    parser.add_argument("--loss", choices=("final", "every-step"), default="final",
                        help="state error at the final step (DeWolf 2016) or at every step")
    parser.add_argument("--out-and-back", action="store_true",
                        help="reach the target by T/2, then return to the centre by T")
    parser.add_argument("--delay", type=integer(0), default=0,
                        help="feedback delay (steps, < --steps)")
    parser.add_argument("--torque-noise", type=real(0), default=0.0,
                        help="std (N m) of Gaussian noise on the applied torque (train and eval)")
    parser.add_argument("--random-targets", type=integer(0), default=0,
                        help="train on N fresh random targets in a disc per iteration (generalisation)")
    parser.add_argument("--init-scale", type=real(0, low_open=True), default=1.0,
                        help="feed-forward initial gain")
    parser.add_argument("--alpha", type=real(0), default=DEFAULT_ALPHA,
                        help="torque-penalty gain; DeWolf's (2016) is 1e-4 (10e-3 * dt), whose "
                             "optimum at T = 40 stops the hand ~3.6 mm short for any controller")
    parser.add_argument("--eval-every", type=integer(0), default=5,
                        help="evaluate the 64-target hand error every N iterations (0: at the end)")
    parser.add_argument("--checkpoint-every", type=integer(1), default=25,
                        help="write checkpoint.npz every N iterations (also at the end and on Ctrl-C)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from checkpoint.npz in --out (same flags; --iterations may grow)")
    parser.add_argument("--devices", type=integer(1), default=None,
                        help="split each batch of targets over N devices (a multiple of N; "
                             "fake CPU devices: XLA_FLAGS=--xla_force_host_platform_device_count=N)")


def settings_from_args(args: argparse.Namespace) -> ReachSettings:
    """The `ReachSettings` the flags ask for (`--quick` shrinks the defaults)."""
    quick = bool(getattr(args, "quick", False))
    return ReachSettings(
        hidden=args.hidden if args.hidden is not None else (16 if quick else 32),
        steps=args.steps if args.steps is not None else rt.T_DEWOLF,
        targets=args.targets if args.targets is not None else (16 if quick else rt.N_TARGETS),
        regime=args.regime, hold=args.hold, seed=args.seed, cg_maxiter=args.cg_maxiter,
        damping=args.damping, loss=args.loss, out_and_back=bool(args.out_and_back),
        delay=args.delay, torque_noise=float(args.torque_noise),
        random_targets=args.random_targets, init_scale=args.init_scale,
        alpha=args.alpha).validate()


def prepare(args: argparse.Namespace) -> None:
    """Checks the flags together (and the checkpoint of `--resume`) before anything is written.

    Raises:
      UsageError, ValueError, CheckpointError: reported by the CLI in one line, exit 2.
    """
    args.iterations = args.iterations or (40 if args.quick else 150)
    settings = settings_from_args(args)
    if args.devices is not None:
        check_devices(args.devices, settings.random_targets or settings.targets,
                      "targets per batch")
    if args.resume and args.out is None:
        raise UsageError("--resume needs --out, the run folder to continue")
    ckpt = None if args.out is None else os.path.join(args.out, CHECKPOINT_NAME)
    if args.resume:
        try:
            meta = check_reach_checkpoint(ckpt, settings)
        except CheckpointError as exc:
            raise UsageError(f"--resume: {exc}") from None
        if meta["iteration"] > args.iterations:
            raise UsageError(f"--iterations {args.iterations} is below the checkpoint's "
                             f"iteration {meta['iteration']}")
    elif ckpt is not None and os.path.exists(ckpt):
        raise UsageError(f"--out: {ckpt} exists; pass --resume to continue that run, "
                         "or choose another --out")


def _train(args, trainer: ReachTrainer, state: ReachState, ckpt: str, out_dir: str) -> ReachState:
    """HF iterations with a progress bar and checkpoints; Ctrl-C saves and exits 130."""
    s = trainer.settings
    bar = Progress(args.iterations - state.iteration, desc="reach HF")
    start = state.iteration

    def callback(st: ReachState, done: int, metrics: dict) -> None:
        bar.update(done - start, **metrics)
        if done % args.checkpoint_every == 0:
            save_reach_checkpoint(ckpt, st, s)
        if _common.interrupt_requested():
            raise KeyboardInterrupt

    with _common.deferred_interrupts():
        try:
            state = trainer.run(state, args.iterations, eval_every=args.eval_every,
                                callback=callback)
        except KeyboardInterrupt:
            bar.close()
            save_reach_checkpoint(ckpt, trainer.last, s)
            print(f"interrupted: checkpoint of iteration {trainer.last.iteration} saved to "
                  f"{ckpt}; continue with the same flags plus --resume --out {out_dir}",
                  file=sys.stderr)
            raise SystemExit(130) from None
        bar.close()
        save_reach_checkpoint(ckpt, state, s)
    return state


def _summary(trainer: ReachTrainer, params) -> dict:
    s = trainer.settings
    out = {}
    for name in ("train", "rotated", "inner"):
        ev = trainer.evaluate(params, name)
        err = np.asarray(ev["hand_error_mm"])
        row = {"mean_mm": float(err.mean()), "max_mm": float(err.max()),
               "median_mm": float(np.median(err)),
               "joint_speed_mean": float(np.mean(ev["joint_speed"])),
               "joint_speed_max": float(np.max(ev["joint_speed"])),
               "loss": float(ev["loss"]),
               "max_abs_torque": float(np.max(np.abs(ev["torque"])))}
        if s.out_and_back:
            row["out_mean_mm"] = float(np.mean(ev["out_error_mm"]))
            row["out_max_mm"] = float(np.max(ev["out_error_mm"]))
        out[name] = row
        out[name + "_eval"] = ev
    return out



def run(args: argparse.Namespace, out_dir: str) -> dict:
    """Trains (or resumes), evaluates, plots; returns the figures for results.json."""
    s = settings_from_args(args)
    ckpt = os.path.join(out_dir, CHECKPOINT_NAME)
    mesh = None if args.devices is None else data_mesh(args.devices)
    trainer = get_trainer(s, mesh)
    state = trainer.initial_state()
    if args.resume:
        state = load_reach_checkpoint(ckpt, s, state)
        print(f"resumed from {ckpt} at iteration {state.iteration}", file=sys.stderr)
    load = os.getloadavg()[0]
    compile_s = trainer.compile(state)
    print(f"compiled in {compile_s:.1f} s (load average {load:.1f})", file=sys.stderr)
    state = _train(args, trainer, state, ckpt, out_dir)

    summary = _summary(trainer, state.params)
    h = state.history
    train_s = h["seconds"][-1] if h["seconds"] else 0.0
    title = (f"jaxctl reach: {s.hidden} units, T = {s.steps}, {s.regime}, "
             f"{state.iteration} HF iterations, {train_s:.1f} s")
    plot_paths = plots.reach_plots(out_dir, trainer.exp.targets, summary, h, title)
    first_below = None
    for i, (mean, mx) in enumerate(zip(h["eval_mean_mm"], h["eval_max_mm"])):
        if mean < 0.1 and mx < 0.5:
            first_below = {"iteration": int(h["eval_iteration"][i]), "seconds": h["eval_seconds"][i]}
            break
    results = {
        "settings": s._asdict(),
        "iterations": state.iteration,
        "train_seconds": train_s,
        "compile_seconds": compile_s,
        "seconds_per_iteration": train_s / max(state.iteration, 1),
        "seconds_per_iteration_median": float(np.median(np.diff([0.0] + h["seconds"]))),
        "load_average_1min_start": load,
        "load_average_1min_end": os.getloadavg()[0],
        "loss_initial": h["loss"][0] if h["loss"] else None,
        "loss_final": h["new_loss"][-1] if h["new_loss"] else None,
        "first_below_0.1mm_mean_0.5mm_max": first_below,
        "history": h,
        "plots": plot_paths,
        "checkpoint": ckpt,
        "devices": args.devices or 1,
    }
    for name in ("train", "rotated", "inner"):
        results[name] = summary[name]
    if s.torque_noise > 0:
        # also the noise-free closed loop of the noise-trained network
        quiet = get_trainer(s._replace(torque_noise=0.0))
        ev = quiet.evaluate(state.params)
        results["train_without_noise"] = {"mean_mm": float(np.mean(ev["hand_error_mm"])),
                                          "max_mm": float(np.max(ev["hand_error_mm"]))}

    rows = [[name, summary[name]["mean_mm"], summary[name]["max_mm"],
             summary[name]["joint_speed_mean"], summary[name]["loss"]]
            for name in ("train", "rotated", "inner")]
    print("\n" + title)
    print(_common.markdown_table(["targets", "mean hand error (mm)", "max (mm)",
                                  "mean final joint speed (rad/s)", "loss"], rows))
    print(f"\ntraining {train_s:.2f} s after {compile_s:.1f} s compile; "
          f"{results['seconds_per_iteration']:.3f} s/iteration; load average {load:.1f}")
    if s.out_and_back:
        print(f"out leg: mean {summary['train']['out_mean_mm']:.3g} mm, max "
              f"{summary['train']['out_max_mm']:.3g} mm at step {s.steps // 2}; back leg: "
              f"mean {summary['train']['mean_mm']:.3g} mm from the centre")
    return results
