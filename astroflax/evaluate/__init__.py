"""Host-side evaluation: classification metrics, plots and tables (numpy/matplotlib/rich, no JAX)."""
