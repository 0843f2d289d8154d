"""`jaxctl npg`: natural policy gradient against vanilla policy gradient on
CartPole-v1 (the experiment of DeWolf 2018) and NPG on Pendulum-v1
(`jaxctl.experiments.npg_sessions`); prints the table, writes the PNGs.
With `--task swimmer,hopper,...`: linear-policy NPG on gymnasium MuJoCo
(`jaxctl.experiments.npg_mujoco`, Rajeswaran et al. 2017) instead; adding
`--mbmf-rounds R`: MB-MF (`jaxctl.experiments.mbmf`, Nagabandi et al. 2018)
against NPG from scratch."""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np

import jaxctl.apps.plots as plots
from jaxctl.apps.common import markdown_table
from jaxctl.apps.flags import UsageError, integer, names, real
from jaxctl.experiments.npg_sessions import NPGSettings, SessionTrainer, confidence_interval, \
    default_chunk, first_batch, group_keys, random_policy_return, session_keys
from jaxctl.experiments.npg_mujoco import THRESHOLDS, NG_LIN_EPISODES, TASKS, MujocoSettings, \
    aligned_returns, train
from jaxctl.experiments.progress import Progress

VARIANTS = ("npg-damped", "npg-dewolf", "npg-cg", "pg-adam")
# Trajectories per iteration: mjrl's Swimmer config uses 10; Hopper's early episodes last
# ~20 steps, so it gets 20 (mjrl's Hopper config asks for 10000 samples instead).
MUJOCO_TRAJ = {"swimmer": 10, "hopper": 20, "halfcheetah": 10, "walker2d": 20}
MBMF_TASKS = {"halfcheetah", "swimmer"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `jaxctl npg`."""
    parser.add_argument("--sessions", type=integer(1), default=10,
                        help="independent training sessions (vmapped)")
    parser.add_argument("--batches", type=integer(1), default=300, help="batches per session")
    parser.add_argument("--steps", type=integer(1), default=200,
                        help="time steps per batch = episode limit")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed of the sessions")
    parser.add_argument("--groups", type=integer(1), default=1,
                        help="with N > 1, the reliability study instead: N groups of --sessions "
                             "sessions (seeds seed, seed + 1, ...), batches to a mean max reward "
                             "of --steps in each group, per CartPole variant (no Pendulum)")
    parser.add_argument("--variants", type=names(VARIANTS), default=list(VARIANTS),
                        help="comma-separated CartPole variants")
    parser.add_argument("--delta", type=real(0, low_open=True), default=0.002,
                        help="NPG step size (damped and CG variants)")
    parser.add_argument("--rel-damping", type=real(0), default=0.01,
                        help="damping relative to the largest Fisher eigenvalue (npg-damped)")
    parser.add_argument("--cg-damping", type=real(0), default=1e-3,
                        help="absolute damping of npg-cg")
    parser.add_argument("--dewolf-delta", type=real(0, low_open=True), default=0.001,
                        help="NPG step size of npg-dewolf, the variant of DeWolf (2018): "
                             "pseudo-inverse, no damping")
    parser.add_argument("--pg-lr", type=real(0, low_open=True), default=0.01,
                        help="Adam learning rate of vanilla PG")
    parser.add_argument("--policy-hidden", type=integer(1), nargs="*", default=[],
                        help="hidden widths of the policy MLP (none = the linear softmax policy "
                             "of DeWolf 2018)")
    parser.add_argument("--gamma", type=real(0, 1), default=0.97, help="discount")
    parser.add_argument("--lam", type=real(0, 1), default=1.0,
                        help="GAE lambda (1 = Monte-Carlo, as DeWolf 2018)")
    parser.add_argument("--bootstrap", action=argparse.BooleanOptionalAction, default=True,
                        help="bootstrap the value after an episode cut by the batch end "
                             "(--no-bootstrap: the returns of DeWolf 2018, which stop at the cut)")
    parser.add_argument("--value-epochs", type=integer(0), default=1,
                        help="Adam steps of the value net per batch")
    parser.add_argument("--pendulum-batches", type=integer(0), default=200,
                        help="NPG batches on Pendulum-v1 (0 skips Pendulum)")
    parser.add_argument("--pendulum-sessions", type=integer(1), default=5,
                        help="Pendulum sessions (vmapped)")
    parser.add_argument("--pendulum-envs", type=integer(1), default=10,
                        help="200-step episodes per Pendulum batch")
    parser.add_argument("--pendulum-delta", type=real(0, low_open=True), default=0.03,
                        help="NPG step size on Pendulum")
    parser.add_argument("--task", type=names(tuple(TASKS)), default=None,
                        help="comma-separated gymnasium MuJoCo tasks: linear-policy NPG "
                             "(Rajeswaran et al. 2017) instead of CartPole/Pendulum")
    parser.add_argument("--seeds", type=integer(1), default=3,
                        help="MuJoCo: seeds --seed, --seed + 1, ...")
    parser.add_argument("--iterations", type=integer(1), default=100,
                        help="MuJoCo: NPG iterations per seed (at most)")
    parser.add_argument("--trajectories", type=integer(0), default=0,
                        help="MuJoCo: trajectories per iteration = vector envs (0: per task, "
                             f"{MUJOCO_TRAJ})")
    parser.add_argument("--seconds-per-seed", type=real(0), default=0.0,
                        help="MuJoCo: stop a seed after this wall time (0: no cap)")
    parser.add_argument("--mujoco-delta", type=real(0, low_open=True), default=0.05,
                        help="MuJoCo: normalized NPG step size (mjrl's Hopper config)")
    parser.add_argument("--mujoco-gamma", type=real(0, 1), default=0.995,
                        help="MuJoCo: discount (mjrl's configs)")
    parser.add_argument("--mbmf-rounds", type=integer(0), default=0,
                        help="MuJoCo (halfcheetah, swimmer): MB-MF of Nagabandi et al. 2018 "
                             "instead: this many MPC aggregation rounds, DAgger into a 64-64 "
                             "policy, NPG from it, against NPG from scratch with that policy "
                             "(0: off)")


def prepare(args: argparse.Namespace) -> None:
    """`--quick` caps the sizes (flags are range-checked by argparse already)."""
    if args.mbmf_rounds:
        if not args.task:
            raise UsageError("--mbmf-rounds needs --task halfcheetah or swimmer")
        if set(args.task) - MBMF_TASKS:
            raise UsageError(f"--mbmf-rounds runs on halfcheetah and swimmer (a forward-velocity "
                             f"reward the planner can use), got --task {','.join(args.task)}")
    if args.quick and args.task:
        args.seeds, args.iterations = min(args.seeds, 2), min(args.iterations, 2)
        args.trajectories = args.trajectories or 2
    elif args.quick:
        args.sessions, args.batches = min(args.sessions, 3), min(args.batches, 20)
        args.pendulum_batches = min(args.pendulum_batches, 10)
        args.pendulum_sessions = min(args.pendulum_sessions, 2)
        args.pendulum_envs = min(args.pendulum_envs, 2)


def cartpole_variants(args: argparse.Namespace) -> dict[str, NPGSettings]:
    """The chosen CartPole variants, everything equal except the policy update."""
    base = NPGSettings(policy_hidden=tuple(args.policy_hidden), gamma=args.gamma, lam=args.lam,
                       bootstrap=args.bootstrap, value_epochs=args.value_epochs,
                       num_steps=args.steps, max_episode_steps=args.steps)
    variants = {
        # Damped, M = F + lambda I has condition <= 1 + 1 / rel_damping: eigh of the P x P
        # Fisher is accurate in float32 and 2.6x cheaper than the SVD of the 200 x P scores.
        "npg-damped": base._replace(algo="npg", delta=args.delta, rel_damping=args.rel_damping,
                                    method="eigh" if args.rel_damping > 0 else "auto"),
        "npg-dewolf": base._replace(algo="npg", delta=args.dewolf_delta, rel_damping=0.0),
        "npg-cg": base._replace(algo="npg", fisher="cg", delta=args.delta,
                                damping=args.cg_damping),
        "pg-adam": base._replace(algo="pg", pg_lr=args.pg_lr),
    }
    return {name: variants[name] for name in args.variants}


def pendulum_settings(args: argparse.Namespace) -> NPGSettings:
    """NPG (matrix-free Fisher + CG, Gaussian MLP policy) on Pendulum-v1."""
    return NPGSettings(env_name="Pendulum-v1", num_steps=200, num_envs=args.pendulum_envs,
                       max_episode_steps=200, algo="npg", fisher="cg", delta=args.pendulum_delta,
                       damping=1e-4, cg_maxiter=10, policy_hidden=(32, 32),
                       policy_output_scale=0.01, log_std_init=-0.5, value_hidden=(64, 64),
                       value_activation="tanh", value_lr=3e-3, value_epochs=20, gamma=0.99,
                       lam=0.97, bootstrap=True, reward_scale=0.1)


def _train(settings: NPGSettings, keys, num_batches: int, desc: str, metric: str) -> dict:
    """All sessions of one variant with a progress bar; returns the trainer's log."""
    trainer = SessionTrainer(settings, default_chunk(num_batches))
    field = {"max_reward": "max_return", "mean_return": "mean_return"}[metric]
    with Progress(num_batches, desc) as bar:
        _, log = trainer.run(trainer.initial_state(keys), num_batches, lambda _, done, m: bar.update(
            done, **{metric: float(np.mean(getattr(m, field)[:, -1]))}))
    return log


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


def group_study(args, out_dir: str) -> dict:
    """The CartPole variants on `args.groups` groups of sessions, all in one vmapped program a
    variant; per group, the first batch whose mean max reward reaches `args.steps`."""
    keys = group_keys(args.seed, args.groups, args.sessions)
    target = float(args.steps)
    study: dict[str, Any] = {"seeds": [args.seed + g for g in range(args.groups)],
                             "sessions_per_group": args.sessions, "batches": args.batches,
                             "variants": {}}
    curves, rows = {}, []
    for name, config in cartpole_variants(args).items():
        res = _train(config, keys, args.batches, f"CartPole {name:10s} {args.groups} groups",
                     "max_reward")
        m = res["metrics"].max_return.reshape(args.groups, args.sessions, -1)
        curves[name] = m
        hits = [first_batch(m[g].mean(axis=0), target) for g in range(args.groups)]
        worst = None if None in hits else max(hits)
        study["variants"][name] = {
            "config": config._asdict(), "batches_to_mean_200": hits, "worst_group": worst,
            "max_reward": m, "ms_per_batch_per_session": 1e3 * res["seconds_per_batch_per_session"],
            "compile_seconds": res["compile_seconds"]}
        rows.append([name, ", ".join(f">{args.batches}" if h is None else str(h) for h in hits),
                     f">{args.batches}" if worst is None else worst])
    png = os.path.join(out_dir, "npg_groups.png")
    plots.npg_group_curves(curves, png, f"CartPole-v1, {args.groups} groups of {args.sessions} "
                           "sessions: max reward per batch, mean and 95% CI", "max reward per batch",
                           (0.0, target), hline=(target, "maximum"))
    study["png"] = png
    print(markdown_table(["variant", "batches to mean 200, per group", "worst group"], rows))
    return {"groups": study}


def run(args, out_dir: str) -> dict:
    """Runs the CartPole variants (and NPG on Pendulum), writes PNGs; returns results.
    With `--groups N > 1`, the reliability study (`group_study`) instead."""
    if args.task and args.mbmf_rounds:
        return mbmf_study(args, out_dir)
    if args.task:
        return mujoco_study(args, out_dir)
    if args.groups > 1:
        return group_study(args, out_dir)
    keys = session_keys(args.seed, args.sessions)
    results: dict[str, Any] = {"cartpole": {}, "summary": []}
    curves = {}
    for name, config in cartpole_variants(args).items():
        res = _train(config, keys, args.batches, f"CartPole {name:10s}", "max_reward")
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
    plots.npg_curves(curves, png, f"CartPole-v1: max reward per batch ({args.steps} steps), mean and 95% CI",
          "max reward per batch", hline=(args.steps, "maximum"), limits=(0, args.steps))
    results["cartpole_png"] = png
    rows = [[s["variant"], s["batches_to_mean_200"], s["batches_to_mean_195"],
             s["mean_max_reward_at_50"], s["mean_max_reward_last"],
             s["ms_per_batch_per_session"], s["compile_seconds"]] for s in results["summary"]]
    print(markdown_table(["variant", "batches to mean 200", "to mean 195", "mean @50",
                          "mean last 1/6", "ms/batch/session", "compile s"], rows))

    if args.pendulum_batches > 0:
        config = pendulum_settings(args)
        pkeys = session_keys(args.seed + 1, args.pendulum_sessions)
        res = _train(config, pkeys, args.pendulum_batches, "Pendulum NPG-CG", "mean_return")
        m = res["metrics"]
        rand = random_policy_return(config, pkeys)
        mean = m.mean_return.mean(axis=0)
        last = max(1, mean.shape[0] // 10)
        ppng = os.path.join(out_dir, "npg_pendulum.png")
        plots.npg_curves({"NPG (CG, Gaussian)": m.mean_return}, ppng,
              "Pendulum-v1: mean episode return per batch, mean and 95% CI", "episode return",
              hline=(float(rand.mean()), "random policy"), limits=(-np.inf, 0.0))
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


def mujoco_study(args, out_dir: str) -> dict:
    """Linear-policy NPG on each `--task`, `--seeds` seeds; per task the aligned curves
    (`env_steps`, `returns` one list per seed), steps, episodes and seconds to the threshold of
    Mania et al. (2018) per seed, the raw per-iteration logs and a PNG."""
    from jaxctl.apps.npg_mujoco_plot import mujoco_curve

    results: dict[str, Any] = {}
    rows = []
    for task in args.task:
        cfg = MujocoSettings(task=task, num_traj=args.trajectories or MUJOCO_TRAJ[task],
                             delta=args.mujoco_delta, gamma=args.mujoco_gamma)
        threshold = THRESHOLDS[task]
        logs = []
        for seed in range(args.seed, args.seed + args.seeds):
            def report(it, log, seed=seed):
                print(f"{task} seed {seed} it {it + 1} steps {log['env_steps'][-1]} "
                      f"return {log['returns'][-1]:.1f} s {log['seconds'][-1]:.0f}", flush=True)

            logs.append(train(cfg, seed, args.iterations, args.seconds_per_seed or float("inf"),
                              threshold, report))
        steps, returns = aligned_returns(logs)
        png = os.path.join(out_dir, f"npg_{task}.png")
        mujoco_curve(steps, returns, threshold, f"{TASKS[task]}: linear-policy NPG, "
                     f"{cfg.num_traj} trajectories/iteration, mean and 95% CI", png)
        last = returns[:, -1]
        results[task] = {
            "config": cfg._asdict(), "seeds": list(range(args.seed, args.seed + args.seeds)),
            "threshold": threshold, "ng_lin_episodes_mania_2018": NG_LIN_EPISODES[task],
            "env_steps": steps, "returns": returns, "runs": logs, "png": png,
            "final_return_mean": float(last.mean()), "final_return_std": float(last.std()),
            **{f"{k}_to_threshold": [log[f"{k}_to_threshold"] for log in logs]
               for k in ("env_steps", "seconds", "episodes")},
            "steps_per_second": [log["steps_per_second"] for log in logs],
        }
        rows.append([task, threshold, ", ".join(str(log["env_steps_to_threshold"]) for log in logs),
                     ", ".join(str(log["episodes_to_threshold"]) for log in logs),
                     NG_LIN_EPISODES[task], f"{last.mean():.0f}", int(steps[-1])])
    print(markdown_table(["task", "threshold", "steps to threshold", "episodes to threshold",
                          "NG-lin episodes (Mania 2018)", "final mean", "steps"], rows))
    return {"mujoco": results}


def mbmf_study(args, out_dir: str) -> dict:
    """MB-MF (`jaxctl.experiments.mbmf.run`) and NPG from scratch with the same 64-64 policy on
    each `--task`, `--seeds` seeds; per task both aligned curves, the model-based phase's steps,
    the steps each arm needs to reach the from-scratch run's final mean return, and a PNG."""
    from jaxctl.apps.npg_mujoco_plot import mbmf_curve
    from jaxctl.experiments import mbmf
    from jaxctl.experiments.aggregation import nagabandi_settings

    settings = mbmf.MBMFSettings(rounds=args.mbmf_rounds)
    agg_settings = nagabandi_settings()
    if args.quick:
        settings = settings._replace(environments=2, dagger_iterations=1, epochs=5)
        agg_settings = nagabandi_settings(hidden=(32,), num_samples=32, horizon=5,
                                          episode_steps=50, random_episodes=2, epochs=2,
                                          retrain_epochs=2)
    results: dict[str, Any] = {}
    rows = []
    seconds = args.seconds_per_seed or float("inf")
    for task in args.task:
        cfg = MujocoSettings(task=task, num_traj=args.trajectories or MUJOCO_TRAJ[task],
                             delta=args.mujoco_delta, gamma=args.mujoco_gamma, **mbmf.POLICY)
        runs, scratch = [], []
        for seed in range(args.seed, args.seed + args.seeds):
            def report(it, log, seed=seed, arm="MB-MF"):
                print(f"{task} {arm} seed {seed} it {it + 1} steps {log['env_steps'][-1]} "
                      f"return {log['returns'][-1]:.1f} s {log['seconds'][-1]:.0f}", flush=True)

            runs.append(mbmf.run(cfg, seed, args.iterations, settings, agg_settings,
                                 max_seconds=seconds, callback=report))
            scratch.append(train(cfg, seed, args.iterations, seconds,
                                 callback=lambda it, log, seed=seed: report(it, log, seed,
                                                                            "scratch")))
        curves = {"MB-MF: MPC, DAgger, then NPG": aligned_returns([r["finetune"] for r in runs]),
                  "NPG from scratch": aligned_returns(scratch)}
        level = float(curves["NPG from scratch"][1][:, -1].mean())
        reach = {}
        for label, (steps, returns) in curves.items():
            hit = np.flatnonzero(returns.mean(0) >= level)
            reach[label] = int(steps[hit[0]]) if hit.size else None
        model_steps = float(np.mean([r["model_based_steps"] for r in runs]))
        png = os.path.join(out_dir, f"mbmf_{task}.png")
        mbmf_curve(curves, model_steps, f"{TASKS[task]}: MB-MF against NPG from scratch, "
                   "64-64 policy", png)
        (mb_steps, mb_returns), (sc_steps, sc_returns) = curves.values()
        results[task] = {
            "config": cfg._asdict(), "mbmf_settings": settings._asdict(),
            "seeds": list(range(args.seed, args.seed + args.seeds)),
            "mbmf": {"env_steps": mb_steps, "returns": mb_returns},
            "scratch": {"env_steps": sc_steps, "returns": sc_returns},
            "model_based_steps": [r["model_based_steps"] for r in runs],
            "scratch_final_mean": level, "steps_to_scratch_final": list(reach.values()),
            "runs": runs, "scratch_runs": scratch, "png": png,
        }
        rows.append([task, f"{model_steps:.0f}", f"{mb_returns[:, 0].mean():.0f}",
                     f"{level:.0f}", *(str(v) for v in reach.values())])
    print(markdown_table(["task", "model-based steps", "MB-MF first NPG iteration",
                          "scratch final mean", "MB-MF steps to it", "scratch steps to it"], rows))
    return {"mbmf": results}
