"""`jaxctl mpc`: model-based RL with a learned MLP dynamics model and jitted MPC
(Nagabandi et al. 2018) on Pendulum-v1 (all JAX), HalfCheetah-v5 and Swimmer-v5
(`jaxctl.experiments.mbrl_pendulum`, `mbrl_mujoco`); prints the table, writes
`mpc.png`.

`--num-samples`, `--horizon` and `--iterations`, when given, override the
task's defaults (with `--quick` too). `--devices N` splits Pendulum's
parallel MPC episodes over N devices (the MuJoCo tasks step one gymnasium
environment on the host).

`--rollouts-per-round N` runs the aggregation study of Nagabandi et al.
(2018) instead, on the MuJoCo tasks only (`jaxctl.experiments.aggregation`):
their recipe (10 random rollouts, then `--iterations` rounds of N MPC
rollouts from N environments planned in one call per step, `--epochs`
after every round) for `--seeds` seeds, writing `aggregation.png`;
`--time-limit` minutes stops starting new rounds (every seed keeps the
same number of rounds); `--pitch-penalty W` plans with the upright variant.
The reproduction:
`jaxctl mpc --tasks halfcheetah --rollouts-per-round 10 --iterations 9 --seeds 3`.

`--follow-paths` runs Fig. 4 of the paper instead (one Swimmer-v5 model,
three paths, `jaxctl.experiments.path_following`), writing `paths.png`.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import jax
import numpy as np

import jaxctl.apps.common as _common
import jaxctl.apps.mbrl_plots as mbrl_plots
import jaxctl.apps.plots as plots
from jaxctl.apps.flags import UsageError, check_devices, integer, names, real
import jaxctl.control.planners as mpc
from jaxctl.experiments.aggregation import nagabandi_settings
from jaxctl.experiments.aggregation_study import aggregation_study
from jaxctl.experiments.mbrl import MBRLSettings, mujoco_settings, pendulum_settings
from jaxctl.experiments.mbrl_mujoco import mujoco_experiment
from jaxctl.experiments.mbrl_pendulum import pendulum_experiment
from jaxctl.util.mesh import data_mesh

TASK_NAMES = {"pendulum": "Pendulum-v1", "halfcheetah": "HalfCheetah-v5", "swimmer": "Swimmer-v5"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `jaxctl mpc`."""
    parser.add_argument("--tasks", type=names(tuple(TASK_NAMES)), default=None,
                        help="comma-separated subset of pendulum, halfcheetah, swimmer "
                             "(default: all three; with --quick: pendulum,halfcheetah)")
    parser.add_argument("--planner", default="random_shooting", choices=sorted(mpc.PLANNERS),
                        help="planner for the MuJoCo tasks (Pendulum also compares all three; "
                             "CEM runs 3 refits of K/3 candidates)")
    parser.add_argument("--warm-start", default="auto", choices=("auto", "on", "off"),
                        help="warm-start from the shifted previous plan on MuJoCo (auto: off for "
                             "random shooting as in Nagabandi et al. 2018, on otherwise)")
    parser.add_argument("--num-samples", type=integer(1), default=None,
                        help="planner candidates K for every task (default: Pendulum 500, MuJoCo "
                             "1000 as Nagabandi et al. 2018 on HalfCheetah; --quick: smaller)")
    parser.add_argument("--horizon", type=integer(1), default=None,
                        help="planning horizon H for every task (default: Pendulum 25, MuJoCo 20 "
                             "as Nagabandi et al. 2018; --quick: smaller)")
    parser.add_argument("--iterations", type=integer(0), default=None,
                        help="data-aggregation iterations for every task (default 3; Swimmer 2; "
                             "--quick: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed for keys and env resets")
    parser.add_argument("--rollouts-per-round", type=integer(1), default=None,
                        help="run the aggregation study of Nagabandi et al. 2018 on the MuJoCo "
                             "tasks: N environments, N MPC rollouts per round (paper: 10)")
    parser.add_argument("--seeds", type=integer(1), default=None,
                        help="seeds of the aggregation study (with --rollouts-per-round; "
                             "default 1)")
    parser.add_argument("--epochs", type=integer(1), default=None,
                        help="training epochs after every round of the aggregation study "
                             "(default 60 as Nagabandi et al. 2018; --quick: 5)")
    parser.add_argument("--time-limit", type=real(0, low_open=True), default=None,
                        help="minutes: the aggregation study starts no round that would end "
                             "later")
    parser.add_argument("--pitch-penalty", type=real(0, low_open=True), default=None,
                        help="aggregation study on halfcheetah: plan with the upright variant, "
                             "reward minus this weight per radian the torso pitches past 90 "
                             "degrees (a deviation from Nagabandi et al. 2018; the reported "
                             "return is the environment's)")
    parser.add_argument("--follow-paths", action="store_true",
                        help="Fig. 4 of Nagabandi et al. 2018 on Swimmer-v5: one model, then MPC "
                             "along a straight line, a left and a right turn, only the reward "
                             "changing (--seeds seeds; --num-samples, --horizon apply)")
    parser.add_argument("--devices", type=integer(1), default=None,
                        help="split Pendulum's parallel MPC episodes over N devices (N must "
                             "divide them; fake CPU devices: "
                             "XLA_FLAGS=--xla_force_host_platform_device_count=N)")


def prepare(args: argparse.Namespace) -> None:
    """Resolves the task list (argparse has range-checked every flag)."""
    study_flags = [f for f in ("seeds", "epochs", "time_limit", "pitch_penalty")
                   if getattr(args, f) is not None]
    if args.follow_paths:
        if args.rollouts_per_round is not None or args.tasks or args.devices is not None:
            raise UsageError("--follow-paths runs on its own (Swimmer-v5): drop "
                             "--rollouts-per-round, --tasks and --devices")
        if [f for f in study_flags if f != "seeds"]:
            raise UsageError("--follow-paths takes --seeds, --num-samples and --horizon only")
        return
    if args.rollouts_per_round is None:
        if study_flags:
            raise UsageError(f"--{study_flags[0].replace('_', '-')} needs --rollouts-per-round")
    else:
        if args.tasks is None:
            args.tasks = ["halfcheetah"]
        if "pendulum" in args.tasks:
            raise UsageError("--rollouts-per-round runs the MuJoCo tasks only (halfcheetah, "
                             "swimmer), not pendulum")
        if args.devices is not None:
            raise UsageError("--devices applies to Pendulum, not to --rollouts-per-round")
        if args.iterations == 0:
            raise UsageError("--iterations must be >= 1 with --rollouts-per-round")
        if args.pitch_penalty is not None and args.tasks != ["halfcheetah"]:
            raise UsageError("--pitch-penalty applies to halfcheetah only (the task with a "
                             "known pitch entry), got --tasks " + ",".join(args.tasks))
    if args.tasks is None:
        args.tasks = ["pendulum", "halfcheetah"] if args.quick else list(TASK_NAMES)
    if args.devices is not None:
        check_devices(args.devices, task_settings("pendulum", args).mpc_episodes,
                      "MPC episodes of Pendulum")


def task_settings(task: str, args: argparse.Namespace) -> MBRLSettings:
    """The settings of `task`: its defaults (or quick sizes), then the explicit flags."""
    name = TASK_NAMES[task]
    cfg = pendulum_settings(args.quick) if task == "pendulum" else mujoco_settings(name, args.quick)
    given = {k: getattr(args, k) for k in ("num_samples", "horizon", "iterations")
             if getattr(args, k) is not None}
    return cfg._replace(**given)


def study_settings(args: argparse.Namespace) -> MBRLSettings:
    """The aggregation study's recipe (`nagabandi_settings`; tiny with --quick), then the flags."""
    cfg = nagabandi_settings(mpc_episodes=args.rollouts_per_round)
    if args.quick:
        cfg = cfg._replace(hidden=(64,), num_samples=100, horizon=5, episode_steps=60,
                           random_episodes=2, iterations=2, epochs=5, retrain_epochs=5,
                           batch_size=128)
    given = {k: getattr(args, k) for k in ("num_samples", "horizon", "iterations")
             if getattr(args, k) is not None}
    if args.epochs is not None:
        given.update(epochs=args.epochs, retrain_epochs=args.epochs)
    return cfg._replace(**given)


def run_study(args: argparse.Namespace, out_dir: str, warm: bool) -> dict:
    """The aggregation study for each MuJoCo task; results.json and the PNG after every round."""
    cfg, seeds = study_settings(args), args.seeds or 1
    png = os.path.join(out_dir, "aggregation.png")
    results: dict[str, Any] = {}
    limit = None if args.time_limit is None else 60 * args.time_limit
    start = time.perf_counter()

    def partial(name):
        def save(res):
            results[name] = res
            mbrl_plots.aggregation_plot(results, png)
            _common.write_results(out_dir, "mpc", vars(args), {"tasks": results, "partial": True})
        return save

    for i, t in enumerate(args.tasks):
        name = TASK_NAMES[t]
        print(f"{name}: {args.planner} K={cfg.num_samples} H={cfg.horizon}, MLP {cfg.hidden}, "
              f"{args.rollouts_per_round} environments, {cfg.iterations} rounds, {seeds} seeds")
        left = None if limit is None else limit - (time.perf_counter() - start)
        results[name] = aggregation_study(
            name, cfg, seeds, jax.random.fold_in(jax.random.PRNGKey(args.seed), i),
            num_envs=args.rollouts_per_round, seed=args.seed, planner=args.planner,
            warm_start=warm, time_limit=left, pitch_penalty=args.pitch_penalty or 0.0,
            on_round=partial(name))
    rows = []
    for name, res in results.items():
        for r, steps in enumerate(res["env_steps"]):
            flipped = np.mean([f[r] for f in res["flipped_fraction"]])
            rows.append([name, steps, f"{res['mean_return'][r]:.1f} ± {res['ci95_return'][r]:.1f}",
                         " ".join(f"{x[r]:.0f}" for x in res["returns"]), f"{flipped:.2f}"])
    table = _common.markdown_table(["task", "model fitted on (steps)", "return (95% t)",
                                    "per seed", "flipped"], rows)
    print("\n" + table)
    mbrl_plots.aggregation_plot(results, png)
    print(f"plot: {png}")
    return {"tasks": results, "task_settings": cfg._asdict(), "planner": args.planner,
            "warm_start": warm, "seeds": seeds, "table": table,
            "total_seconds": time.perf_counter() - start, "plot": "aggregation.png"}


def run_paths(args: argparse.Namespace, out_dir: str) -> dict:
    """Fig. 4 (`path_following.run`) for each seed; the table of distances and the PNG."""
    from jaxctl.experiments import path_following
    from jaxctl.experiments.aggregation_study import t_interval

    cfg = path_following.PathSettings()
    if args.quick:
        cfg = cfg._replace(model=MBRLSettings(hidden=(32,), epochs=2, retrain_epochs=2),
                           random_episodes=2, random_steps=50, episode_steps=20, num_samples=32,
                           horizon=4)
    cfg = cfg._replace(**{k: getattr(args, k) for k in ("num_samples", "horizon")
                          if getattr(args, k) is not None})
    seeds = range(args.seed, args.seed + (args.seeds or 1))
    runs = [path_following.run(cfg, seed) for seed in seeds]
    rows = []
    for name in runs[0]["paths"]:
        d = t_interval([r["paths"][name]["mean_distance"] for r in runs])
        p = t_interval([r["paths"][name]["progress"] for r in runs])
        rows.append([name, f"{d[0]:.3f} ± {d[1]:.3f}", f"{p[0]:.2f} ± {p[1]:.2f}"])
    table = _common.markdown_table(["path", "mean distance to the path (m, 95% t)",
                                    "progress along it (m)"], rows)
    print("\n" + table)
    png = mbrl_plots.paths_plot(runs, os.path.join(out_dir, "paths.png"))
    print(f"plot: {png}")
    return {"paths": runs, "settings": cfg._asdict(), "table": table, "plot": "paths.png"}


def run(args: argparse.Namespace, out_dir: str) -> dict:
    """Runs the experiments of `jaxctl mpc`; returns the figures for results.json."""
    warm = {"on": True, "off": False}.get(args.warm_start, args.planner != "random_shooting")
    if args.rollouts_per_round is not None:
        return run_study(args, out_dir, warm)
    if args.follow_paths:
        return run_paths(args, out_dir)
    key = jax.random.PRNGKey(args.seed)
    results: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    start = time.perf_counter()
    for i, t in enumerate(args.tasks):
        name = TASK_NAMES[t]
        k = jax.random.fold_in(key, i)
        t0 = time.perf_counter()
        cfg = task_settings(t, args)
        if t == "pendulum":
            print(f"{name}: K={cfg.num_samples} H={cfg.horizon}, MLP {cfg.hidden}")
            # --quick compares only the main planner (each planner is one more compile).
            planners = ("random_shooting",) if args.quick else ("random_shooting", "cem", "mppi")
            mesh = None if args.devices is None else data_mesh(args.devices)
            results[name] = pendulum_experiment(cfg, k, planners, mesh)
        else:
            print(f"{name}: {args.planner} K={cfg.num_samples} H={cfg.horizon}, MLP {cfg.hidden}, "
                  f"warm start {warm}")
            results[name] = mujoco_experiment(name, cfg, k, args.planner, warm, args.seed)
        results[name]["seconds"] = time.perf_counter() - t0
        settings[name] = cfg._asdict()

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
    plots.mpc_plot(results, png)
    print(f"plot: {png}")
    return {"tasks": results, "task_settings": settings, "planner": args.planner,
            "warm_start": warm, "table": table, "total_seconds": time.perf_counter() - start,
            "plot": "mpc.png"}
