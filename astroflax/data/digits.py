"""28x28 digits in the MNIST layout: the bundled 5,000 real digits, user CSV files, PNG grids.

The bundled set (``files/mnist5k.npz``, see ``PROVENANCE_mnist.md``; made by
``scripts/convert_mnist.py``) has 500 digits per class with a fixed stratified split (360
train / 40 val / 100 test per class). Used by the ``vae`` task and by ``digits``, the CNN
that judges the VAE's generated digits.
"""

from __future__ import annotations

import gzip
import io
import warnings
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from astroflax.data.cache import content_hash
from astroflax.errors import DataError

BUNDLED_NPZ = "mnist5k.npz"
IMAGE_SHAPE = (28, 28)
NUM_PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
NUM_CLASSES = 10
CLASS_NAMES = [str(i) for i in range(NUM_CLASSES)]


def read_digit_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an MNIST-layout CSV (optionally .gz): 784 pixel values 0-255 then the label 0-9.

    Returns ``(images uint8 (N, 28, 28), labels uint8 (N,))``. No header. Any malformed cell
    raises :class:`DataError` naming the file, the 1-based row and the column.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory; expected an MNIST-layout CSV file (784 pixels then a label per row)")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, ValueError) as exc:  # gzip.BadGzipFile is an OSError
            raise DataError(f"{path}: not a readable gzip file, it is truncated or damaged ({type(exc).__name__}: {exc})") from None
    ncol = NUM_PIXELS + 1
    try:  # fast path (C parser); the slow loop below only runs to name the first bad cell
        with warnings.catch_warnings():  # a cell like 1e30 warns in the cast; the slow path names it below
            warnings.simplefilter("ignore", RuntimeWarning)
            values = pd.read_csv(io.BytesIO(raw), header=None, dtype=np.int64).to_numpy()
        ok = values.ndim == 2 and values.shape[1] == ncol
    except (ValueError, OverflowError, pd.errors.ParserError, pd.errors.EmptyDataError):
        ok = False
    if not ok:
        values = _parse_slowly(path, raw, ncol)
    pix, lab = values[:, :NUM_PIXELS], values[:, NUM_PIXELS]
    bad_pix = np.argwhere((pix < 0) | (pix > 255))
    if len(bad_pix):
        r, c = bad_pix[0]
        raise DataError(f"{path}: row {r + 1}, column {c + 1} (pixel {c}) = {pix[r, c]}; expected 0-255")
    bad_lab = np.flatnonzero((lab < 0) | (lab >= NUM_CLASSES))
    if len(bad_lab):
        r = bad_lab[0]
        raise DataError(
            f"{path}: row {r + 1}, column {ncol} (label) = {lab[r]}; expected a class 0-{NUM_CLASSES - 1}"
        )
    return pix.astype(np.uint8).reshape(-1, *IMAGE_SHAPE), lab.astype(np.uint8)


def _parse_slowly(path: Path, raw: bytes, ncol: int) -> np.ndarray:
    """Row-by-row parse, only to name the first malformed row / cell in the error."""
    rows = raw.decode("utf-8", errors="replace").splitlines()
    while rows and not rows[-1].strip():
        rows.pop()
    if not rows:
        raise DataError(f"{path}: empty file; expected rows of {NUM_PIXELS} pixel values then a label")
    values = np.empty((len(rows), ncol), dtype=np.int64)
    for r, line in enumerate(rows, start=1):
        cells = line.split(",")
        if len(cells) != ncol:
            raise DataError(
                f"{path}: row {r} has {len(cells)} columns; expected {ncol} ({NUM_PIXELS} pixels then the label)"
            )
        try:
            values[r - 1] = [int(c) for c in cells]
        except ValueError:
            bad = next(i for i, c in enumerate(cells) if not c.strip().lstrip("+-").isdigit())
            what = "label" if bad == NUM_PIXELS else f"pixel {bad}"
            raise DataError(
                f"{path}: row {r}, column {bad + 1} ({what}) = {cells[bad].strip()!r}; expected an integer"
            ) from None
        except OverflowError:  # an integer beyond int64
            bad = next(i for i, c in enumerate(cells) if abs(int(c)) >= 2**63)
            what = "label" if bad == NUM_PIXELS else f"pixel {bad}"
            expected = f"a class 0-{NUM_CLASSES - 1}" if bad == NUM_PIXELS else "0-255"
            raise DataError(f"{path}: row {r}, column {bad + 1} ({what}) = {cells[bad].strip()}; expected {expected}") from None
    return values


def content_version(images: np.ndarray, labels: np.ndarray, split: np.ndarray) -> str:
    """12 hex digits of a sha256 over the arrays: changes whenever the data do.

    Hashes ``str(dtype) + str(shape)`` then the bytes of each array (the layout the bundled
    file's ``version`` was made with, so that string stays valid).
    """
    parts = []
    for a in (images, labels, split):
        parts += [f"{a.dtype}{a.shape}".encode(), np.ascontiguousarray(a).tobytes()]
    return content_hash(*parts, length=12)


def load_bundled_mnist() -> dict[str, np.ndarray]:
    """The packaged digits: ``image`` uint8 (5000, 28, 28), ``label`` uint8, ``split`` uint8
    (0 train, 1 val, 2 test), ``source_row`` (row in the original CSV) and ``version``."""
    ref = resources.files("astroflax.data").joinpath("files", BUNDLED_NPZ)
    with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def flat_pixels(images: np.ndarray, binarize: str = "none") -> np.ndarray:
    """uint8 images -> float32 (N, 784) in [0, 1]: ``threshold`` maps pixel >= 128 to 1 (a proper
    Bernoulli target), ``none`` keeps grey levels / 255."""
    flat = np.asarray(images).reshape(len(images), NUM_PIXELS)
    if binarize == "threshold":
        return (flat >= 128).astype(np.float32)
    return flat.astype(np.float32) / 255.0


def write_digit_grid(rows: Sequence[np.ndarray], path: str | Path, scale: int = 2, pad: int = 2) -> Path:
    """PNG of image tiles: one grid row per entry of ``rows`` (each (k, h, w) grey or (k, h, w, 3)
    colour, values in [0, 1]; digits are 28x28).

    Size is exact: width = C*w*scale + (C+1)*pad, height = R*h*scale + (R+1)*pad, where C is
    the longest row; missing tiles and the gaps are mid-grey.
    """
    from matplotlib.image import imsave

    tile_shape = next((np.asarray(r).shape[1:] for r in rows if len(r)), IMAGE_SHAPE)
    h, w = tile_shape[0] * scale, tile_shape[1] * scale
    extra = tuple(tile_shape[2:])
    ncols = max(1, max(len(r) for r in rows))
    canvas = np.full((len(rows) * h + (len(rows) + 1) * pad, ncols * w + (ncols + 1) * pad, *extra), 0.5, np.float32)
    for i, row in enumerate(rows):
        for j, img in enumerate(np.asarray(row, np.float32)):
            tile = np.kron(np.clip(img, 0.0, 1.0), np.ones((scale, scale, *(1,) * len(extra)), np.float32))
            y0, x0 = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y0:y0 + h, x0:x0 + w] = tile
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    imsave(out, canvas, cmap="gray", vmin=0.0, vmax=1.0, format="png")
    return out


def is_headerless(path: str | Path) -> bool:
    """True when the first line of a text table is all numbers (the MNIST CSV layout has no header)."""
    path = Path(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", errors="replace") as fh:
            first = fh.readline()
    except (OSError, EOFError):
        return False
    cells = [c.strip() for c in first.split(",")]
    return len(cells) > 1 and all(c.lstrip("+-").replace(".", "", 1).isdigit() for c in cells)


def read_pixel_table(tab, label_column: str = "label") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A table with a header: one row per image, a label column and one column per pixel (0-255),
    e.g. Kaggle's ``label, pixel0 ... pixel783``. Returns (uint8 images (N, s, s), raw labels,
    pixel column names); the image side s is the square root of the number of pixel columns."""
    import math

    from astroflax.data.checks import show_value

    df = tab.df
    lc = label_column.lower()
    if lc not in df.columns:
        raise DataError(f"{tab.path}: no label column {label_column!r} (data.label_column) and no image file column; "
                        "expected a table of pixel columns plus a label column, or of image files")
    pix_cols = [c for c in df.columns if c not in (lc, "split", "id", "object_id")]
    side = math.isqrt(len(pix_cols))
    if side * side != len(pix_cols) or side < 8:
        raise DataError(f"{tab.path}: {len(pix_cols)} pixel columns (all but {label_column!r}, split, id); expected a "
                        "square image of at least 8x8 (e.g. 784 = 28x28)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        v = df[pix_cols].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(v) | (v < 0) | (v > 255) | (v != np.round(v))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise tab.fail(pix_cols[c], int(r), f"expected an integer pixel value 0-255, got "
                                             f"{show_value(df[pix_cols[c]].iloc[r])}", int(bad.any(axis=1).sum()))
    return v.astype(np.uint8).reshape(-1, side, side), df[lc].to_numpy(object), pix_cols
