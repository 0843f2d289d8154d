"""Several seeds of the aggregation loop, round by round, with a wall-time budget.

All seeds advance together (round r of every seed, then round r + 1), so a
run stopped by its time limit leaves every seed with the same number of
rounds; `on_round(result)` is called after each completed round (write
partial results there). Summaries are means over seeds with a 95%
Student-t interval, `mean +- t_{0.975, S-1} s / sqrt(S)` for S seeds.

References:
  Nagabandi et al. (2018), https://arxiv.org/abs/1708.02596.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import numpy as np

from jaxctl.envs.mbrl_tasks import FORWARD_TASKS, forward_velocity_reward, upright_reward
from jaxctl.experiments.aggregation import PITCH_INDEX, Aggregation
from jaxctl.experiments.mbrl import MBRLSettings
from jaxctl.experiments.npg_sessions import confidence_interval


def t_interval(values: Any) -> tuple[float, float]:
    """`(mean, half width)` of the 95% Student-t interval over the first axis (nan for one value)."""
    v = np.asarray(values, np.float64)
    mean, half = confidence_interval(v)
    return float(mean), float(half) if len(v) >= 2 else float("nan")


def aggregation_study(env_name: str, settings: MBRLSettings, seeds: int, key: jax.Array, *,
                      num_envs: int, seed: int = 0, planner: str = "random_shooting",
                      warm_start: bool = False, time_limit: float | None = None,
                      pitch_penalty: float = 0.0,
                      on_round: Callable[[dict], None] | None = None) -> dict:
    """Runs `settings.iterations` aggregation rounds of `num_envs` MPC rollouts for each seed.

    Seed s uses `fold_in(key, s)` and environment reset seeds from `seed + s`.
    `pitch_penalty > 0` plans with `upright_reward` (the upright variant, a
    deviation from the paper); the reported returns stay the environment's.
    Before round r the study stops if the time used plus the longest round
    so far would pass `time_limit` seconds (the result then says so).

    Returns:
      dict with `env_steps` (transitions each round's model was fitted on),
      `returns` (one list per seed, each the mean over its rollouts, aligned
      with `env_steps`), `rollout_returns`, `flipped_fraction` (per seed and
      round, the mean over rollouts), `random_returns`, timing, and
      `rounds_completed` / `rounds_requested` / `stopped_by_time_limit`.
    """
    import gymnasium

    task = FORWARD_TASKS[env_name]
    reward = forward_velocity_reward(task.velocity_index, task.ctrl_cost_weight)
    if pitch_penalty:
        if env_name not in PITCH_INDEX:
            raise ValueError(f"pitch_penalty needs a task with a known pitch entry "
                             f"({sorted(PITCH_INDEX)}), got {env_name}")
        reward = upright_reward(reward, PITCH_INDEX[env_name], pitch_penalty)
    t_start = time.perf_counter()
    runs: list[Aggregation] = []
    for s in range(seeds):  # every seed shares one compiled trainer and planner
        runs.append(Aggregation([gymnasium.make(env_name) for _ in range(num_envs)], settings,
                                reward, jax.random.fold_in(key, s), seed=seed + s,
                                planner=planner, warm_start=warm_start,
                                pitch_index=PITCH_INDEX.get(env_name),
                                like=runs[0] if runs else None))
    out: dict[str, Any] = {
        "env_steps": [], "returns": [[] for _ in runs], "rollout_returns": [[] for _ in runs],
        "flipped_fraction": [[] for _ in runs], "rollouts_per_round": num_envs,
        "episode_steps": settings.episode_steps,
        "random_returns": [r.random_returns.tolist() for r in runs],
        "random_return_mean": float(np.mean([r.random_returns for r in runs])),
        "plan_seconds": [], "env_seconds_per_step": [], "train_seconds": [],
        "round_seconds": [], "mpc_steps": 0, "rounds_requested": settings.iterations,
        "stopped_by_time_limit": False, "setup_seconds": time.perf_counter() - t_start}
    longest = 0.0
    for r in range(settings.iterations):
        used = time.perf_counter() - t_start
        if time_limit is not None and r > 0 and used + longest > time_limit:
            out["stopped_by_time_limit"] = True
            print(f"{env_name}: stopping before round {r}: {used:.0f} s used, a round takes "
                  f"up to {longest:.0f} s, limit {time_limit:.0f} s")
            break
        t0 = time.perf_counter()
        results = [run.round(f"{env_name} seed {s} round {r}") for s, run in enumerate(runs)]
        longest = max(longest, time.perf_counter() - t0)
        out["env_steps"].append(results[0].trained_on)
        for s, res in enumerate(results):
            out["returns"][s].append(float(np.mean(res.returns)))
            out["rollout_returns"][s].append(res.returns.tolist())
            out["flipped_fraction"][s].append(float(np.mean(res.flipped)))
        out["plan_seconds"].append(float(np.median([x.plan_seconds for x in results])))
        out["env_seconds_per_step"].append(
            float(sum(x.env_seconds for x in results) / sum(x.steps for x in results)))
        out["train_seconds"].append(float(sum(x.train_seconds for x in results)))
        out["round_seconds"].append(time.perf_counter() - t0)
        out["mpc_steps"] += sum(x.steps for x in results)
        mean, half = t_interval([x[-1] for x in out["returns"]])
        print(f"{env_name} round {r} (model fitted on {results[0].trained_on} steps): return "
              f"{mean:.1f} +- {half:.1f} over {seeds} seeds, flipped "
              f"{np.mean([x[-1] for x in out['flipped_fraction']]):.2f}, "
              f"{out['round_seconds'][-1]:.0f} s", flush=True)
        if on_round is not None:
            on_round(summarize(out, time.perf_counter() - t_start))
    out["planner_seconds_n_envs"] = runs[0].planner_seconds(num_envs)
    out["planner_seconds_1_env"] = runs[0].planner_seconds(1)
    for run in runs:
        for env in run.envs:
            env.close()
    return summarize(out, time.perf_counter() - t_start)


def summarize(out: dict, seconds: float) -> dict:
    """Adds the per-round mean and 95% interval over seeds, the steps per second and the wall time."""
    done = len(out["env_steps"])
    out = dict(out, rounds_completed=done, total_seconds=seconds)
    per_round = [t_interval([x[r] for x in out["returns"]]) for r in range(done)]
    out["mean_return"] = [m for m, _ in per_round]
    out["ci95_return"] = [h for _, h in per_round]
    # MPC steps over the rounds' wall time (fits included).
    out["loop_env_steps_per_second"] = out["mpc_steps"] / max(sum(out["round_seconds"]), 1e-9)
    return out
