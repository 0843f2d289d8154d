"""The PNG of the spiking CartPole study (`jaxctl spiking --task cartpole`)."""

from __future__ import annotations

import numpy as np

from jaxctl.apps.plots import _pyplot, _save


def _tau_label(tau: float | None) -> str:
    return "no synapse" if tau is None else f"synapse tau = {1e3 * tau:g} ms"


def cartpole_plot(results: dict, path: str) -> str:
    """Reward and action agreement against the firing-rate scale, one line per synapse tau.

    `results` is `jaxctl.experiments.spiking_cartpole.run_study`'s dict. Left:
    mean episode reward with its 95% interval over policies (clipped to
    `[0, episode_limit]`), the rate policy's reward as a line and the solved
    threshold (195). Right: the fraction of steps where the spiking action is
    the rate policy's on the same observation, with the mean firing rate.
    """
    plt = _pyplot()
    limit = float(results["episode_limit"])
    rate = results["rate_reward"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    taus = list(dict.fromkeys(r["tau"] for r in results["spiking"]))
    for i, tau in enumerate(taus):
        rows = sorted((r for r in results["spiking"] if r["tau"] == tau), key=lambda r: r["scale"])
        s = np.array([r["scale"] for r in rows])
        m = np.array([r["mean_reward"] for r in rows])
        h = np.array([r["ci95"] for r in rows])
        label = _tau_label(tau)
        color = f"C{i}"
        ax.plot(s, m, "o-", color=color, label=f"spiking, {label}")
        ax.fill_between(s, np.clip(m - h, 0, limit), np.clip(m + h, 0, limit), color=color,
                        alpha=0.2)
        ax2.plot(s, [r["action_agreement"] for r in rows], "o-", color=color, label=label)
    lo, hi = (float(np.clip(rate["mean_reward"] + d * rate["ci95"], 0, limit)) for d in (-1, 1))
    ax.axhline(rate["mean_reward"], color="k", lw=1.5, label="rate policy (ReLU)")
    ax.axhspan(lo, hi, color="k", alpha=0.1)
    ax.axhline(results.get("solved_threshold", 195.0), color="gray", ls="--",
               label="solved (195)")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.05 * limit)
    ax.set_xlabel("firing-rate scale s")
    ax.set_ylabel(f"episode reward (limit {limit:g})")
    ax.set_title(f"reward, mean and 95% CI over {len(rate['per_policy'])} policies")
    ax.legend(loc="lower right", fontsize=8)

    first = sorted((r for r in results["spiking"] if r["tau"] == taus[0]),
                   key=lambda r: r["scale"])
    for r in first:
        ax2.annotate(f"{r['mean_rate_hz']:.3g} Hz", (r["scale"], r["action_agreement"]),
                     textcoords="offset points", xytext=(0, -14), ha="center", fontsize=7)
    ax2.set_xscale("log")
    ax2.set_ylim(0, 1.02)
    ax2.set_xlabel("firing-rate scale s")
    ax2.set_ylabel("fraction of steps with the rate policy's action")
    ax2.set_title(f"action agreement (labels: mean firing rate, {_tau_label(taus[0])})")
    ax2.legend(loc="lower right", fontsize=8)
    k = results["steps_per_env_step"]
    return _save(fig, f"Spiking ReLU policy on CartPole: {k} network steps of "
                      f"{1e3 * results['dt']:g} ms per {1e3 * results['env_dt']:g} ms env step",
                 path)
