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
