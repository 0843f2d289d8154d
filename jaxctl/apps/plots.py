"""The PNG plots of the `jaxctl` commands (matplotlib, Agg backend).

`reach_plots` (the reaches and the learning curve of `jaxctl reach`),
`npg_curves` (mean and 95% interval over sessions, `jaxctl npg`) and
`mpc_plot` (returns per aggregation iteration and the studies of
Nagabandi et al. 2018, `jaxctl mpc`).
"""

from __future__ import annotations

import os

import numpy as np

import jaxctl.envs.arm as _arm
import jaxctl.envs.reach_task as rt
from jaxctl.experiments.npg_sessions import confidence_interval


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, title: str | None, path: str) -> str:
    plt = _pyplot()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def reach_plots(out_dir: str, targets: dict, summary: dict, history: dict,
                title: str) -> list[str]:
    """`reaches.png` (hand paths to the train / rotated / inner targets) and
    `learning_curve.png` (loss, damping, hand error against training time)."""
    plt = _pyplot()
    paths = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    for ax, name in zip(axes, ("train", "rotated", "inner")):
        ev, ts = summary[name + "_eval"], targets[name]
        hand = np.asarray(ev["paths"])
        start = np.asarray(_arm.hand_position(rt.start_state()[:2]))
        for k in range(hand.shape[0]):
            xs = np.concatenate([[start[0]], hand[k, :, 0]])
            ys = np.concatenate([[start[1]], hand[k, :, 1]])
            ax.plot(xs, ys, lw=0.7, color=plt.cm.hsv(k / hand.shape[0]))
        theta = np.linspace(0, 2 * np.pi, 200)
        r = float(np.linalg.norm(np.asarray(ts.xy[0]) - np.asarray(rt.CENTRE)))
        ax.plot(rt.CENTRE[0] + r * np.cos(theta), rt.CENTRE[1] + r * np.sin(theta), "k:", lw=0.8)
        ax.scatter(np.asarray(ts.xy)[:, 0], np.asarray(ts.xy)[:, 1], s=10, c="k", zorder=3)
        row = summary[name]
        ax.set_title(f"{name}: mean {row['mean_mm']:.3g} mm, max {row['max_mm']:.3g} mm")
        ax.set_aspect("equal")
        ax.set_xlabel("x (m)")
        ax.set_ylabel("y (m)")
    paths.append(_save(fig, title, os.path.join(out_dir, "reaches.png")))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    it = np.arange(1, len(history["loss"]) + 1)
    axes[0].semilogy(it, history["new_loss"], label="training loss after the step")
    if history["eval_iteration"]:
        axes[0].semilogy(history["eval_iteration"], history["eval_loss"], "o", ms=3,
                         label="closed-loop loss (evaluation)")
    axes[0].set_xlabel("HF iteration")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    ax2 = axes[0].twinx()
    ax2.semilogy(it, history["damping"], color="gray", lw=0.8, alpha=0.6)
    ax2.set_ylabel("damping (gray)")
    if history["eval_iteration"]:
        axes[1].semilogy(history["eval_seconds"], history["eval_mean_mm"], "o-", ms=3, label="mean")
        axes[1].semilogy(history["eval_seconds"], history["eval_max_mm"], "s-", ms=3, label="max")
        axes[1].axhline(0.1, color="k", ls=":", lw=0.8)
        axes[1].axhline(0.5, color="k", ls="--", lw=0.8)
    axes[1].set_xlabel("training seconds (compile excluded)")
    axes[1].set_ylabel("final hand error over the training targets (mm)")
    axes[1].legend()
    paths.append(_save(fig, title, os.path.join(out_dir, "learning_curve.png")))
    return paths




def npg_curves(curves: dict[str, np.ndarray], path: str, title: str, ylabel: str,
               hline=None, limits: tuple[float, float] = (-np.inf, np.inf)) -> str:
    """One line per variant: the mean over sessions (axis 0) and its 95% Student-t band.

    The band is clipped to `limits`, the feasible range of the quantity.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, x in curves.items():
        mean, half = confidence_interval(x)
        b = np.arange(1, mean.shape[0] + 1)
        ax.plot(b, mean, label=f"{name} (n={x.shape[0]})")
        ax.fill_between(b, np.clip(mean - half, *limits), np.clip(mean + half, *limits), alpha=0.25)
    if hline is not None:
        ax.axhline(hline[0], color="k", lw=0.8, ls="--", label=hline[1])
    ax.set_xlabel("batch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, None, path)


def npg_group_curves(curves: dict[str, np.ndarray], path: str, title: str, ylabel: str,
                     limits: tuple[float, float], hline=None) -> str:
    """One panel per group: per variant, the mean over the group's sessions and its 95%
    Student-t band (clipped to `limits`, the feasible range); `curves[name]` has shape
    (groups, sessions, batches)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    groups = next(iter(curves.values())).shape[0]
    cols = min(groups, 3)
    rows = -(-groups // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for g, ax in enumerate(axes.flat):
        if g >= groups:
            ax.axis("off")
            continue
        for name, x in curves.items():
            mean, half = confidence_interval(x[g])
            b = np.arange(1, mean.shape[0] + 1)
            ax.plot(b, mean, label=f"{name} (n={x.shape[1]})")
            ax.fill_between(b, np.clip(mean - half, *limits), np.clip(mean + half, *limits),
                            alpha=0.25)
        if hline is not None:
            ax.axhline(hline[0], color="k", lw=0.8, ls="--", label=hline[1])
        ax.set(xlabel="batch", ylabel=ylabel, title=f"group {g + 1}", ylim=(limits[0], 1.05 * limits[1]))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def mpc_plot(results: dict, path: str) -> str:
    """Returns per aggregation iteration (one panel per task), the HalfCheetah horizon
    sweep and data-size study, and the open-loop prediction errors."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    # Top row: return per aggregation iteration, one panel per task (scales differ).
    tasks = [name for name, res in results.items() if "mpc_return_per_iteration" in res]
    for ax, name in zip(axes[0], tasks):
        res = results[name]
        r = np.asarray(res["mpc_return_per_iteration"])
        ax.plot(np.arange(len(r)), r, "o-", label="MPC, learned model")
        ax.axhline(res["random_return_mean"], color="gray", ls="--", label="random policy")
        steps = res.get("episode_steps", 200)
        ax.set(xlabel="aggregation iteration", ylabel=f"return ({steps} steps)",
               title=f"{name}: return per aggregation iteration")
        ax.legend(fontsize=7)
    for ax in axes[0][len(tasks):]:
        ax.axis("off")

    cheetah = results.get("HalfCheetah-v5", {})
    ax = axes[1, 0]
    if "horizon_sweep" in cheetah:
        hs = cheetah["horizon_sweep"]
        h = sorted(int(k) for k in hs["returns"])
        ax.plot(h, [hs["returns"][str(k)] for k in h], "o-", label="MPC, final model")
        ax.axhline(hs["random_return"], color="gray", ls="--", label="random")
        ax.set_xscale("log")
        ax.set(title=f"HalfCheetah horizon sweep ({hs['steps']} steps)", xlabel="horizon H",
               ylabel="forward return")
        ax.legend(fontsize=7)

    ax = axes[1, 1]
    if "data_size_study" in cheetah:
        ds = cheetah["data_size_study"]
        for d, rets in ds["returns"].items():
            ax.plot(np.arange(len(rets)), rets, "o-", label=f"{d} random rollouts")
        ax.axhline(ds["random_return"], color="gray", ls="--", label="random policy")
        ax.set(title=f"HalfCheetah initial data vs aggregation ({ds['steps']}-step rollouts)",
               xlabel="aggregation iteration", ylabel="forward return")
        ax.legend(fontsize=7)

    ax = axes[1, 2]
    for name, res in results.items():
        if "open_loop_error" in res:
            ax.semilogy(res["open_loop_error"], label=name)
    ax.set(title="Open-loop prediction error (z-scored RMS)", xlabel="steps ahead",
           ylabel="error")
    ax.legend(fontsize=7)
    return _save(fig, None, path)
