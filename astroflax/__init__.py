"""astroflax: train, evaluate, checkpoint and report neural networks for astronomy on JAX."""

__version__ = "0.1.0"
