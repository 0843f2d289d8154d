"""Top layer, the `jaxctl` commands: parse flags, run an experiment, write results.json and plots.

Nothing in the package imports this layer.
"""
