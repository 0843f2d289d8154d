"""Spiking-network benchmark: jaxctl jitted against Nengo's reference simulator on the same network.

    python benchmarks/spiking.py [--quick] [--single-thread] [--sizes 784 512 512 10]
                                 [--steps 200] [--batch 1 32 256] [--out DIR]

The network: dense layers, integrate-and-fire ReLU neurons
(`SpikingRectifiedLinear`) in the hidden layers with a firing-rate scale,
a `Lowpass` synapse on every connection, the read-out probed. Nengo builds
it as Nengo DL's converter would (an `Ensemble` per hidden layer driven on
its `.neurons` with gain `s`, bias `s b` and amplitude `1 / s`, the weights
as connection transforms); jaxctl runs `spiking_network(...).run` in one
`lax.scan`, `vmap`ped over a batch of `B` inputs (Nengo runs one input at a
time). It

1. checks correctness first: in float64 both simulators give the same spike
   count for every neuron on every step of one input (the oracle), and in
   float32 at most one spike per neuron apart over the run;
2. reports build / compile time apart (`nengo.Simulator(...)`, jit
   lower + compile);
3. times Nengo's `run_steps` and jaxctl's jitted run, interleaved, minimum
   over rounds (the machine is shared), and reports neuron-updates per
   second (hidden neurons x steps x inputs / s) and the ratio to Nengo.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small and fast (smoke test)")
    parser.add_argument("--single-thread", action="store_true",
                        help="pin XLA and BLAS to one thread")
    parser.add_argument("--sizes", type=int, nargs="+", default=[784, 512, 512, 10],
                        help="layer widths, input to read-out")
    parser.add_argument("--steps", type=int, default=200, help="simulation steps per input")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32, 256],
                        help="inputs per jaxctl call (vmapped)")
    parser.add_argument("--scale", type=float, default=100.0, help="firing-rate scale")
    parser.add_argument("--synapse", type=float, default=0.005, help="Lowpass tau (s)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--out", default=None, help="folder for results.json and spiking_bench.md")
    args = parser.parse_args(argv)

    from jaxctl.apps import common as _common

    if args.single_thread:
        _common.request_single_thread()

    import jax
    import jax.numpy as jnp
    import nengo
    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    if args.single_thread:
        # numpy (Nengo's engine) loaded its BLAS before the environment variables were set
        threadpool_limits(1)
    blas_threads = max((p["num_threads"] for p in threadpool_info()), default=1)

    from jaxctl.spiking import dense, spiking_network

    if args.quick:
        args.sizes, args.steps, args.batch, args.repeats = [64, 32, 32, 4], 50, [1, 8], 2
    out = _common.make_run_dir(args.out, "bench-spiking")
    dt, sizes, s, tau = 0.001, args.sizes, args.scale, args.synapse
    n_layers, hidden = len(sizes) - 1, sum(sizes[1:-1])
    rng = np.random.default_rng(0)
    # Unit-variance currents of mean 0.5 on [0, 1] inputs: rates around s / 2 Hz.
    weights = [rng.normal(size=(a, b)) / np.sqrt(a * (0.33 if i == 0 else 0.5 / s))
               for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]
    biases = [np.full(b, 0.5) for b in sizes[1:]]
    inputs = rng.uniform(0, 1, size=(max(args.batch), sizes[0]))

    def nengo_model(x, probe_spikes):
        with nengo.Network(seed=0) as model:
            prev = nengo.Node(x)
            spike_probes = []
            for i in range(n_layers - 1):
                n = sizes[i + 1]
                ens = nengo.Ensemble(n, 1, neuron_type=nengo.SpikingRectifiedLinear(
                    amplitude=1 / s, initial_state={"voltage": np.zeros(n)}),
                    gain=s * np.ones(n), bias=s * biases[i])
                nengo.Connection(prev if i == 0 else prev.neurons, ens.neurons,
                                 transform=weights[i].T, synapse=tau)
                if probe_spikes:
                    spike_probes.append(nengo.Probe(ens.neurons, synapse=None))
                prev = ens
            readout = nengo.Node(size_in=sizes[-1])
            nengo.Connection(prev.neurons, readout, transform=weights[-1].T, synapse=tau)
            nengo.Connection(nengo.Node(biases[-1]), readout, synapse=None)
            probe = nengo.Probe(readout, synapse=None)
        return model, probe, spike_probes

    net = spiking_network((dense(),) * n_layers, dt=dt, synapses=tau, scale_firing_rates=s)

    def params_of(dtype):
        return [{"w": jnp.asarray(w, dtype), "b": jnp.asarray(b, dtype)}
                for w, b in zip(weights, biases)]

    # ---- 1. correctness: spike counts of both simulators on one input
    model, _, spike_probes = nengo_model(inputs[0], probe_spikes=True)
    with nengo.Simulator(model, dt=dt, progress_bar=False) as sim:
        sim.run_steps(args.steps)
    nengo_counts = [np.round(sim.data[p] * dt * s) for p in spike_probes]
    checks = {"nengo_spikes": float(sum(c.sum() for c in nengo_counts))}
    assert checks["nengo_spikes"] > hidden, "the network must spike"
    with jax.enable_x64(True):
        res64 = net.run(params_of(jnp.float64), jnp.asarray(inputs[0], jnp.float64), args.steps,
                        probe=True)
        ours64 = [np.asarray(c) for c in res64.spikes]
    checks["float64_identical_spikes"] = all(np.array_equal(a, b)
                                             for a, b in zip(ours64, nengo_counts))
    assert checks["float64_identical_spikes"], "float64 spikes differ from Nengo's"
    res32 = net.run(params_of(jnp.float32), jnp.asarray(inputs[0], jnp.float32), args.steps,
                    probe=True)
    diff = [np.abs(np.asarray(a).sum(0) - b.sum(0)) for a, b in zip(res32.spikes, nengo_counts)]
    checks["float32_max_count_difference_per_neuron"] = float(max(d.max() for d in diff))
    checks["float32_neurons_with_other_count"] = float(np.mean(np.concatenate(diff) > 0))
    assert checks["float32_max_count_difference_per_neuron"] <= 1

    # ---- 2. build / compile time apart
    model, probe, _ = nengo_model(inputs[0], probe_spikes=False)
    t0 = time.perf_counter()
    nengo_sim = nengo.Simulator(model, dt=dt, progress_bar=False)
    build = {"nengo_build_seconds": time.perf_counter() - t0}
    run_batch = jax.jit(jax.vmap(lambda p, x: net.run(p, x, args.steps).output,
                                 in_axes=(None, 0)))
    calls = {}

    def nengo_call():
        nengo_sim.reset()
        nengo_sim.run_steps(args.steps)
        return nengo_sim.data[probe]

    calls["nengo"] = nengo_call
    for dtype, batches in ((jnp.float32, args.batch), (jnp.float64, [1])):
        for b in batches:
            name = f"jaxctl-{jnp.dtype(dtype).name}-B{b}"
            with jax.enable_x64(dtype == jnp.float64):
                p, x = params_of(dtype), jnp.asarray(inputs[:b], dtype)
                t0 = time.perf_counter()
                compiled = run_batch.lower(p, x).compile()
                build[f"{name}_compile_seconds"] = time.perf_counter() - t0
            calls[name] = (lambda c, p, x: (lambda: c(p, x)))(compiled, p, x)

    # ---- 3. interleaved timing
    best = _common.interleaved_min_seconds(calls, args.repeats,
                                           min_total=0.0 if args.quick else 5.0)
    rows, records = [], []
    for name, seconds in best.items():
        n_inputs = 1 if name == "nengo" else int(name.rsplit("B", 1)[1])
        rate = hidden * args.steps * n_inputs / seconds
        records.append({"simulator": name, "inputs": n_inputs, "seconds": seconds,
                        "neuron_updates_per_second": rate})
    nengo_rate = records[0]["neuron_updates_per_second"]
    for r in records:
        r["ratio_vs_nengo"] = r["neuron_updates_per_second"] / nengo_rate
        rows.append([r["simulator"], r["inputs"], 1e3 * r["seconds"],
                     r["neuron_updates_per_second"] / 1e6, r["ratio_vs_nengo"]])
    nengo_sim.close()

    table = _common.markdown_table(
        ["simulator", "inputs", "ms per run", "M neuron-updates / s", "x Nengo"], rows)
    threads = ("1 thread" if args.single_thread else "all threads") + \
        f" (numpy BLAS: {blas_threads})"
    header = (f"Spiking ReLU network {'-'.join(map(str, sizes))}, {args.steps} steps of 1 ms, "
              f"Lowpass {1e3 * tau:g} ms, scale {s:g}; jax {jax.__version__}, nengo "
              f"{nengo.__version__}, {threads}; min of {args.repeats}+ interleaved rounds")
    print(header)
    print(table)
    print("checks:", checks)
    print("build / compile seconds:", {k: round(v, 3) for k, v in build.items()})
    with open(os.path.join(out, "spiking_bench.md"), "w") as f:
        f.write(header + "\n\n" + table + "\n")
    payload = {"settings": vars(args),
               "environment": {**_common.environment_info(), "blas_threads": blas_threads},
               "checks": checks, "build_seconds": build, "results": records}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(_common.to_jsonable(payload), f, indent=2)
    print(f"\nresults: {os.path.join(out, 'results.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
