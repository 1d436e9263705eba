"""The gateway's benchmarks, one entry point each, run as modules from the repository root (`python -m bench.run`)."""
