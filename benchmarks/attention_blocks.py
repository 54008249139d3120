"""Full attention all at once against blockwise (``model.attention_block``), by sequence length.

For each length L: the compiled train-step gradient's temporary memory (XLA's own buffer
assignment, ``memory_analysis().temp_size_in_bytes``: what the step needs beyond its inputs and
outputs) and its median time, for the dense attention (the baseline) and the blockwise one,
printed as ratios blockwise / dense. Same weights, same synthetic batch (every light curve a
random length up to L), the full preset's width (d_model 64, 4 heads, 3 layers).

    python benchmarks/attention_blocks.py [--lengths 192 1024 2048] [--block 128] [--batch 16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from astroflax.models.lightcurve import TransientClassifier


def batch_of(b: int, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    lengths = r.integers(n // 4, n + 1, b)
    mask = np.arange(n)[None, :] < lengths[:, None]
    return {
        "time": np.sort(r.uniform(0, 1000, (b, n)), axis=1).astype(np.float32),
        "flux": r.normal(size=(b, n)).astype(np.float32),
        "flux_err": r.uniform(0.01, 0.2, (b, n)).astype(np.float32),
        "band": r.integers(0, 6, (b, n)).astype(np.int32),
        "mask": mask,
        "label": r.integers(0, 14, b).astype(np.int32),
    }


def measure(block: int, n: int, b: int, reps: int) -> tuple[int, float]:
    model = TransientClassifier(14, d_model=64, num_heads=4, num_layers=3, attention="full",
                                attention_block=block, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    batch = batch_of(b, n)

    def loss(params, batch):
        logits = nnx.merge(graphdef, params)(batch, train=True, rng=jax.random.key(1))
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

    grad = jax.jit(jax.grad(loss)).lower(params, batch).compile()
    temp = grad.memory_analysis().temp_size_in_bytes
    jax.block_until_ready(grad(params, batch))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(grad(params, batch))
        times.append(time.perf_counter() - t)
    return temp, statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[192, 1024, 2048])
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    print(f"batch {args.batch}, block {args.block}, {jax.device_count()} device(s), {jax.default_backend()}")
    print(f"{'L':>6} {'dense MiB':>10} {'block MiB':>10} {'memory':>8} {'dense ms':>9} {'block ms':>9} {'time':>7}")
    for n in args.lengths:
        mem_d, t_d = measure(0, n, args.batch, args.reps)
        mem_b, t_b = measure(args.block, n, args.batch, args.reps)
        print(f"{n:>6} {mem_d / 2**20:>10.1f} {mem_b / 2**20:>10.1f} {mem_b / mem_d:>7.2f}x "
              f"{t_d * 1e3:>9.0f} {t_b * 1e3:>9.0f} {t_b / t_d:>6.2f}x", flush=True)


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before the first row's timing
    main()
