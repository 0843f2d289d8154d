"""The learning-curve PNG of `jaxctl npg --task ...`: mean return over seeds against env
steps, its 95% Student-t band, and the threshold of Mania et al. (2018) as a dashed line."""

from __future__ import annotations

import numpy as np

from jaxctl.apps.plots import _pyplot, _save
from jaxctl.experiments.npg_sessions import confidence_interval


def mujoco_curve(env_steps: np.ndarray, returns: np.ndarray, threshold: float, title: str,
                 path: str) -> str:
    """`returns` is (seeds, points) on the grid `env_steps`; writes and returns `path`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    mean, half = confidence_interval(returns)
    x = np.asarray(env_steps) / 1e6
    ax.plot(x, mean, label=f"NPG, linear policy (mean of {returns.shape[0]} seeds)")
    ax.fill_between(x, mean - half, mean + half, alpha=0.25, label="95% t-interval")
    ax.axhline(threshold, color="k", lw=0.8, ls="--", label=f"threshold {threshold:g} "
               "(Mania et al. 2018)")
    ax.set_xlabel("environment steps (millions)")
    ax.set_ylabel("mean training return per iteration")
    ax.set_title(title, fontsize=10)
    # Headroom above the threshold line: the legend goes there, off the line and the data.
    ax.set_ylim(top=1.4 * max(threshold, float(np.max(mean + half))))
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, None, path)


def mbmf_curve(curves: dict[str, tuple[np.ndarray, np.ndarray]], model_steps: float, title: str,
               path: str) -> str:
    """Return against env steps for each `label -> (env_steps, returns (seeds, points))`, mean
    and 95% t-band, with the end of the model-based phase (mean over seeds) dotted."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, (steps, returns) in curves.items():
        mean, half = confidence_interval(returns)
        x = np.asarray(steps) / 1e6
        line, = ax.plot(x, mean, label=f"{label} (mean of {returns.shape[0]} seeds)")
        ax.fill_between(x, mean - half, mean + half, color=line.get_color(), alpha=0.2)
    ax.axvline(model_steps / 1e6, color="k", lw=0.8, ls=":",
               label="end of the model-based phase (MPC, DAgger)")
    ax.set_xlabel("environment steps (millions)")
    ax.set_ylabel("mean training return per iteration")
    ax.set_title(title + "; bands: 95% t-interval", fontsize=10)
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, None, path)
