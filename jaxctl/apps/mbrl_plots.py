"""The figure of `jaxctl mpc --rollouts-per-round N`: return against environment steps.

Per task: the mean over seeds with a 95% Student-t band, each seed as a
thin line, the random policy, and for HalfCheetah the published figures as
references (other rewards and benchmarks, so not directly comparable):
Nagabandi et al. (2018), about +200 at 10k and +600 at 60k steps (their
plot, rllab reward `v_x - 0.05 ||a||^2`), and the MBBL benchmark's random
shooting, 421 +- 55 at 200k steps (Wang et al. 2019, gym reward).
"""

from __future__ import annotations

import numpy as np

from jaxctl.apps.plots import _pyplot, _save

PAPER_POINTS = ((10_000, 200.0), (60_000, 600.0))  # Nagabandi et al. (2018), read off their plot
MBBL_RANDOM_SHOOTING = (200_000, 421.0, 55.0)  # Wang et al. (2019), mean +- std at 200k steps


def aggregation_plot(results: dict, path: str) -> str:
    """Per task of `results` (each an `aggregation_study` result): the return panel and the
    fraction of steps spent flipped (`|pitch| > pi/2`)."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(results), 2, figsize=(13, 5 * len(results)), squeeze=False,
                             gridspec_kw={"width_ratios": (2, 1)})
    for (ax, ax_flip), (name, res) in zip(axes, results.items()):
        x = np.asarray(res["env_steps"], float) / 1000
        runs = np.asarray(res["returns"], float).reshape(-1, len(x))
        mean = np.asarray(res["mean_return"], float)
        half = np.nan_to_num(np.asarray(res["ci95_return"], float))
        for i, r in enumerate(runs):
            ax.plot(x, r, "-", lw=0.8, alpha=0.6, color="tab:blue",
                    label="single seeds" if i == 0 else None)
        ax.errorbar(x, mean, yerr=half if len(runs) > 1 else None, fmt="o-", lw=2, capsize=3,
                    color="tab:blue", label=f"mean of {len(runs)} seeds")
        if len(runs) > 1:
            ax.fill_between(x, mean - half, mean + half, color="tab:blue", alpha=0.2,
                            label="95% t-interval")
        ax.axhline(res["random_return_mean"], color="gray", ls="--", label="random policy")
        if name.startswith("HalfCheetah"):
            px, py = zip(*PAPER_POINTS)
            ax.plot(np.asarray(px) / 1000, py, "s", color="tab:red", ms=8,
                    label="Nagabandi et al. 2018 (their plot, rllab reward)")
            bx, by, bs = MBBL_RANDOM_SHOOTING
            ax.errorbar([bx / 1000], [by], yerr=[bs], fmt="D", color="tab:green", capsize=4,
                        label="MBBL random shooting (gym reward, benchmark)")
            ax.set_xlim(0, bx / 1000 * 1.05)
        n_roll = res["rollouts_per_round"]
        ax.set(xlabel="environment steps the model was fitted on (thousands)",
               ylabel=f"return per rollout ({res.get('episode_steps', 1000)} steps)",
               title=f"{name}: {n_roll} MPC rollouts per round, "
                     f"{res['rounds_completed']} of {res['rounds_requested']} rounds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center right")
        flips = np.asarray(res["flipped_fraction"], float).reshape(-1, len(x))
        for i, f in enumerate(flips):
            ax_flip.plot(x, f, "o-", lw=0.8, ms=3, label=f"seed {i}")
        ax_flip.set(xlabel="environment steps the model was fitted on (thousands)",
                    ylabel="fraction of MPC steps with |pitch| > pi/2", ylim=(-0.02, 1.02),
                    xlim=(0, 1.1 * x.max() + 5),
                    title=f"{name}: time spent flipped")
        ax_flip.grid(alpha=0.3)
        ax_flip.legend(fontsize=7)
    return _save(fig, None, path)


def paths_plot(runs: list[dict], path: str) -> str:
    """`jaxctl mpc --follow-paths`: per path, the desired polyline and the driven root positions
    of every seed (`path_following.run` results), on equal axes in metres."""
    plt = _pyplot()
    names = list(runs[0]["paths"])
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        wp = np.asarray(runs[0]["waypoints"][name])
        ax.plot(wp[:, 0], wp[:, 1], "k--", lw=1.5, label="desired path")
        for i, run in enumerate(runs):
            xy = np.asarray(run["paths"][name]["positions"])
            d = run["paths"][name]["mean_distance"]
            ax.plot(xy[:, 0], xy[:, 1], "-", lw=1.2,
                    label=f"seed {run['seed']} (mean distance {d:.2f} m)")
        ax.set(xlabel="x (m)", ylabel="y (m)", title=f"{runs[0]['env_name']}: {name}")
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("One dynamics model, three paths (only the reward changes)", fontsize=11)
    return _save(fig, None, path)
