"""The general trainer: state, optimiser, pure steps, the loop, checkpoints, sharding."""
