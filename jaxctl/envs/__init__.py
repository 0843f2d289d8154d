"""Environments and task definitions: plants, gymnax / gymnasium adapters, task rewards."""
