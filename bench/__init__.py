"""moteur benchmarks: one module per capability; `python -m bench` (or `make bench`) runs them all."""
