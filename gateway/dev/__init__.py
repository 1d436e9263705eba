"""Tools for trying the gateway out: the demo and the synthetic register it (and tests and benchmarks) load."""
