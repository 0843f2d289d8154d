"""The PNG plots of `jaxctl spiking` (the figures of DeWolf 2020, on the 8x8 digits).

- `raster`: conv-layer spikes while a few images are shown one after the
  other, untuned (scale 1) beside the default settings;
- `output_over_time`: the read-out over one presentation at several
  synapse time constants;
- `accuracy_curves`: held-out accuracy against presentation time, tau and
  firing-rate scale, mean over seeds with 95% bands clipped to [0, 100] %.
"""

from __future__ import annotations

import numpy as np

from jaxctl.apps.plots import _pyplot, _save


def raster(panels: list[tuple[str, np.ndarray]], path: str, n_neurons: int = 300) -> str:
    """One raster per `(label, spikes (n_images, n_steps, neurons))`, the images in sequence.

    A dot marks a neuron that spiked in a step (larger: more than one spike);
    the first `n_neurons` neurons are shown.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, (label, spikes) in zip(axes[0], panels):
        n_images, n_steps, _ = spikes.shape
        seq = spikes[:, :, :n_neurons].reshape(n_images * n_steps, -1)
        t, i = np.nonzero(seq)
        ax.scatter(t, i, s=np.where(seq[t, i] > 1, 6, 2), c="k", marker="|", lw=0.6,
                   label="spike" if t.size else "spike (none)")
        for k in range(1, n_images):
            ax.axvline(k * n_steps - 0.5, color="tab:red", lw=0.8, ls=":")
        ax.set(xlim=(-0.5, n_images * n_steps - 0.5), ylim=(-0.5, seq.shape[1] - 0.5),
               xlabel=f"time step ({n_images} images x {n_steps} steps, red: next image)",
               ylabel="conv neuron", title=f"{label}: {int(spikes.sum())} spikes")
        ax.legend(loc="upper right", fontsize=8)
    return _save(fig, "Conv-layer spikes (first neurons), images shown in sequence", path)


def output_over_time(outputs: dict[str, np.ndarray], label: int, path: str, dt: float) -> str:
    """The 10 read-outs over one presentation (`outputs[name]` of shape `(n_steps, 10)`)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(outputs), figsize=(4.2 * len(outputs), 3.8), sharey=True,
                             squeeze=False)
    for ax, (name, out) in zip(axes[0], outputs.items()):
        t = 1e3 * dt * np.arange(1, out.shape[0] + 1)
        for d in range(out.shape[1]):
            ax.plot(t, out[:, d], lw=2.0 if d == label else 0.8, label=f"digit {d}")
        pred = int(np.argmax(out[-1]))
        ax.set(title=f"{name}: last-step argmax {pred}", xlabel="time (ms)")
    axes[0][0].set_ylabel("read-out (logit)")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(fig, f"Read-out over time for one test image (label {label}; thick line)", path)


def _band(ax, x, records, label, marker="o-"):
    mean = 100 * np.array([r["accuracy"]["mean"] for r in records])
    half = 100 * np.array([r["accuracy"]["ci95"] for r in records])
    ax.plot(x, mean, marker, ms=4, label=label)
    ax.fill_between(x, np.clip(mean - half, 0, 100), np.clip(mean + half, 0, 100), alpha=0.25)


def _value_ticks(ax, values):
    """Ticks at the swept values of a log axis, labelled as plain numbers."""
    ax.set_xticks(values, [f"{v:g}" for v in values])
    ax.minorticks_off()


def accuracy_curves(results: dict, path: str) -> str:
    """Accuracy (%) against presentation time, synapse tau and firing-rate scale."""
    plt = _pyplot()
    sweeps, default = results["sweeps"], results["default_settings"]
    rate = 100 * results["rate_accuracy"]["mean"]
    n_seeds = len(results["seeds"])
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), sharey=True)
    steps = [r["setting"]["n_steps"] for r in sweeps["presentation"]]
    _band(axes[0], steps, sweeps["presentation"],
          f"scale {default['scale']:g}, tau {default['tau']}")
    _band(axes[0], steps, sweeps["presentation_untuned"], "untuned: scale 1, no synapses", "s-")
    axes[0].set(xscale="log", xlabel="presentation time (steps of 1 ms)",
                title="Presentation time")
    _value_ticks(axes[0], steps)
    taus = sweeps["tau"]
    _band(axes[1], np.arange(len(taus)), taus,
          f"{default['n_steps']} steps, scale {default['scale']:g}")
    axes[1].set_xticks(np.arange(len(taus)),
                       ["none" if r["setting"]["tau"] is None else f"{1e3 * r['setting']['tau']:g}"
                        for r in taus])
    axes[1].set(xlabel="synapse tau (ms), input->conv and conv->dense", title="Synapses")
    scales = [r["setting"]["scale"] for r in sweeps["scale"]]
    _band(axes[2], scales, sweeps["scale"], f"{default['n_steps']} steps, tau {default['tau']}")
    for reg in sweeps["regularised"]:
        _band(axes[2], [r["setting"]["scale"] for r in reg["spiking"]], reg["spiking"],
              f"rate-regularised, weight {reg['setting']['rate_weight']:g}", "^--")
    axes[2].set(xscale="log", xlabel="firing-rate scale", title="Firing-rate scale")
    _value_ticks(axes[2], scales)
    axes[0].set_ylabel(f"held-out accuracy (%), mean and 95% CI over {n_seeds} seeds")
    for ax in axes:
        ax.axhline(rate, color="k", ls="--", lw=0.8, label=f"rate network {rate:.1f}%")
        ax.axhline(10, color="gray", ls=":", lw=0.8, label="chance 10%")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center right")
    return _save(fig, "Spiking accuracy on the 360 held-out digits (last-step read-out)", path)
