"""Layer 3, spiking: neurons, synapses, and trained rate networks run as spiking networks over time.

The conversion of DeWolf (2020) in JAX: train a rate network, run it with
spiking neurons (`spiking_network`), then tune presentation time, synapses
and firing rates (`scale_firing_rates`, `firing_rate_penalty`).
"""
from jaxctl.spiking import network, neurons, synapses, training  # noqa: F401
from jaxctl.spiking.network import (  # noqa: F401
    SimResult,
    SpikingNetwork,
    StepOutput,
    conv2d,
    dense,
    from_flax,
    rate_apply,
    spiking_network,
)
from jaxctl.spiking.neurons import (  # noqa: F401
    LIF,
    LIFRate,
    RectifiedLinear,
    SoftLIFRate,
    SpikingRectifiedLinear,
)
from jaxctl.spiking.synapses import lowpass  # noqa: F401
from jaxctl.spiking.training import firing_rate_penalty  # noqa: F401
