"""Reading user galaxy images (PNG/JPEG via Pillow, FITS via astropy) and the shared normalisation.

Rendered and real images go through the same two steps: :func:`to_model_size` (centre-crop to a
square, area-resample to the model size) and :func:`normalise` (per-image, per-band asinh
stretch). Band conventions (the model's channels are g, r, i):

- RGB images (PNG/JPEG): the usual astronomical colour composite, so R -> i, G -> r, B -> g
  (channels reversed). An alpha channel is dropped.
- Grayscale images and 2-D FITS: one band, replicated to all three channels.
- 3-D FITS cubes: three bands along the first (``(3, H, W)``) or last (``(H, W, 3)``) axis,
  taken in the order g, r, i.

Also the bundled Galaxy Zoo cutouts (``files/galaxy_zoo_smoke.npz``, see
``PROVENANCE_galaxy_zoo.md``), which :func:`prepare_real` turns into model inputs exactly as
user files are.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from astroflax.data.checks import ABS_MAX, fits_warnings, show_value
from astroflax.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
FITS_EXTENSIONS = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")
SUPPORTED = IMAGE_EXTENSIONS + FITS_EXTENSIONS
GALAXY_ZOO_FILE = "galaxy_zoo_smoke.npz"
MAX_BANDS = 16  # a cube with more planes than this is a spectral cube or a stack, not a multi-band cutout


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for ext in sorted(SUPPORTED, key=len, reverse=True):
        if name.endswith(ext):
            return ext
    return path.suffix.lower()


def read_image(path: str | Path) -> np.ndarray:
    """One image file -> float32 ``(H, W, 3)`` in g, r, i order (see module docstring).

    The three-band view the bundled (rendered-galaxy) model reads: one band is replicated.
    """
    path = Path(path)
    arr, _ = read_bands(path, max_bands=3)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] != 3:
        raise DataError(f"{path}: image has {arr.shape[-1]} bands; expected 1 or 3")
    return arr


def read_bands(path: str | Path, max_bands: int | None = None) -> tuple[np.ndarray, float]:
    """One image file -> float32 ``(H, W, C)`` with its own number of bands, and its full scale.

    RGB(A) PNG/JPEG: 3 bands in g, r, i order (alpha dropped); grey: 1 band; 2-D FITS: 1 band;
    3-D FITS: N bands along the short axis (``(N, H, W)``, FITS's own order, or ``(H, W, N)``).
    The full scale is the largest value the file's pixel type can hold (255 for 8-bit, 65535
    for 16-bit images), NaN for FITS (floats with no fixed range): the VAE maps pixels to [0, 1]
    with it. ``max_bands=3`` keeps the bundled model's message for cubes it cannot read.
    """
    path = Path(path)
    ext = _suffix(path)
    if ext not in SUPPORTED:
        raise DataError(f"{path}: unsupported extension {ext or '(none)'!r}; expected one of {', '.join(SUPPORTED)}")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; expected an image file ({', '.join(SUPPORTED)})")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if ext in FITS_EXTENSIONS:
        arr, full = _read_fits(path, max_bands), float("nan")
    else:
        arr, full = _read_pillow(path)
    return check_pixels(np.asarray(arr), str(path)), full


def check_pixels(arr: np.ndarray, where: str) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` pixels -> float32 ``(H, W, C)``, or a DataError naming ``where``.

    Rejects values beyond float32's safe range (finite in float64 but not after the stretch),
    images under 8x8, all-NaN and constant images; other NaN/Inf pixels become the median (warned).
    """
    big = np.isfinite(arr) & (np.abs(arr) > ABS_MAX)
    if big.any():  # finite in float64 but beyond what the float32 resampling and stretch can hold
        at = tuple(int(k) for k in np.argwhere(big)[0])
        raise DataError(f"{where}: pixel (x={at[1]}, y={at[0]}) is {show_value(arr[at])}; "
                        f"expected |value| <= {ABS_MAX:g} [{int(big.sum())} such values]")
    arr = np.asarray(arr, np.float32)
    if arr.ndim == 2:
        arr = arr[..., None]
    if min(arr.shape[:2]) < 8:
        raise DataError(f"{where}: image is {arr.shape[1]}x{arr.shape[0]} pixels; expected at least 8x8")
    finite = np.isfinite(arr)
    if not finite.any():
        raise DataError(f"{where}: every pixel is NaN/Inf; expected a real image")
    if not finite.all():
        import warnings

        warnings.warn(f"{where}: {int((~finite).any(axis=-1).sum())} NaN/Inf pixels replaced by the image's median",
                      UserWarning, stacklevel=3)
        arr = np.where(finite, arr, np.nanmedian(np.where(finite, arr, np.nan)))
    if float(arr.max() - arr.min()) == 0.0:
        raise DataError(f"{where}: image is constant (all pixels = {float(arr.flat[0])}); expected a galaxy image")
    return arr


def _read_pillow(path: Path) -> tuple[np.ndarray, float]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(im.convert("F"), np.float32), 65535.0
            if im.mode in ("I", "F"):
                return np.asarray(im.convert("F"), np.float32), float("nan")
            if im.mode in ("L", "1"):
                return np.asarray(im.convert("F"), np.float32), 255.0
            if im.mode == "LA":
                return np.asarray(im.getchannel(0), np.float32), 255.0
            rgb = np.asarray(im.convert("RGB"), np.float32)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: cannot read as an image, the file is damaged or truncated "
                        f"({type(exc).__name__}: {first})") from None
    return rgb[..., ::-1], 255.0  # R, G, B -> i, r, g reversed = g, r, i


def _read_fits(path: Path, max_bands: int | None = None) -> np.ndarray:
    from astropy.io import fits

    try:
        with fits_warnings(path), fits.open(path, memmap=False) as hdul:
            data = next((h.data for h in hdul if getattr(h, "data", None) is not None and h.data.ndim > 0), None)
            data = None if data is None else np.array(data, dtype=np.float64)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated/damaged files fail in many ways (e.g. "cannot reshape")
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: cannot read as FITS, the file is damaged or truncated ({type(exc).__name__}: {first})") from None
    if data is None:
        raise DataError(f"{path}: FITS file has no image data in any HDU")
    data = np.squeeze(data)
    if data.ndim == 2:
        return data
    limit = max_bands if max_bands is not None else MAX_BANDS
    if data.ndim == 3 and data.shape[0] <= limit and data.shape[0] < min(data.shape[1:]):
        return np.moveaxis(data, 0, -1)
    if data.ndim == 3 and data.shape[-1] <= limit and data.shape[-1] < min(data.shape[:2]):
        return data
    if max_bands == 3:
        raise DataError(f"{path}: FITS image has shape {data.shape}; expected 2-D (one band) or 3-D with 3 bands "
                        "(3, H, W) or (H, W, 3)")
    raise DataError(f"{path}: FITS image has shape {data.shape}; expected 2-D (one band) or a 3-D cube of at most "
                    f"{MAX_BANDS} bands, (N, H, W) or (H, W, N)")


def to_model_size(img: np.ndarray, size: int, crop: float = 1.0) -> np.ndarray:
    """Centre-crop to a square of ``crop`` x the shorter side, then area/bilinear-resample to ``size``."""
    from PIL import Image

    h, w = img.shape[:2]
    side = max(1, int(round(min(h, w) * crop)))
    y0, x0 = (h - side) // 2, (w - side) // 2
    sq = img[y0:y0 + side, x0:x0 + side]
    if side == size:
        return np.ascontiguousarray(sq, np.float32)
    method = Image.Resampling.BOX if side > size else Image.Resampling.BILINEAR
    bands = [np.asarray(Image.fromarray(np.ascontiguousarray(sq[..., b], np.float32), mode="F").resize((size, size), method))
             for b in range(sq.shape[-1])]
    return np.stack(bands, axis=-1).astype(np.float32)


def normalise(images: np.ndarray, softening: float | np.ndarray = 0.1) -> np.ndarray:
    """Per-image, per-band asinh stretch, identical for rendered and real images.

    Subtract the band's median (the sky), divide by the band's 99th percentile inside the central
    half of the image (the galaxy, not field stars at the edge), then ``asinh(x / a) / asinh(1 / a)``
    with softening ``a``: faint outskirts are lifted, the core maps near 1. Scaling each band on its
    own makes the input insensitive to a survey's colour calibration; colour gradients remain.
    """
    x = np.asarray(images, np.float32)
    single = x.ndim == 3
    if single:
        x = x[None]
    n, size = x.shape[0], x.shape[1]
    sky = np.median(x.reshape(n, -1, x.shape[-1]), axis=1)[:, None, None, :]
    x = x - sky
    q = size // 4
    centre = x[:, q:size - q, q:size - q, :].reshape(n, -1, x.shape[-1])
    scale = np.percentile(centre, 99, axis=1)[:, None, None, :]
    noise = 1.4826 * np.median(np.abs(x.reshape(n, -1, x.shape[-1])), axis=1)[:, None, None, :]
    scale = np.maximum(scale, np.maximum(3 * noise, 1e-12))
    a = np.broadcast_to(np.asarray(softening, np.float32), (n,))[:, None, None, None]
    y = np.arcsinh(x / (scale * a)) / np.arcsinh(1 / a)
    y = np.clip(y, -1.0, 2.0).astype(np.float32)
    return y[0] if single else y


def list_image_files(path: str | Path) -> list[Path]:
    """A file, or the supported image files in a folder (sorted; other files are ignored)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such file or directory")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and _suffix(p) in SUPPORTED)
    if not files:
        raise DataError(f"{path}: folder has no image files; expected {', '.join(SUPPORTED)}")
    return files


def load_images(path: str | Path, size: int, crop: float = 1.0, softening: float = 0.1) -> tuple[np.ndarray, list[str]]:
    """Read, resize and normalise one file or every image in a folder: ((N, size, size, 3), names)."""
    files = list_image_files(path)
    imgs = [to_model_size(read_image(f), size, crop) for f in files]
    with np.errstate(over="ignore", invalid="ignore"):
        images = normalise(np.stack(imgs), softening)
    bad = ~np.isfinite(images).reshape(len(files), -1).all(axis=1)
    if bad.any():  # never hand NaN/inf to the model
        raise DataError(f"{files[int(np.flatnonzero(bad)[0])]}: pixel values are not finite after resizing and the "
                        "asinh stretch; check the image's values")
    return images, [f.name for f in files]


def prepare_real(rgb_or_bands: np.ndarray, size: int, crop: float, softening: float, rgb: bool = True) -> np.ndarray:
    """Real images (N, H, W, 3) -> model inputs, exactly as :func:`load_images` prepares user files."""
    x = np.asarray(rgb_or_bands, np.float32)
    if rgb:
        x = x[..., ::-1]  # R, G, B -> g, r, i order (see the module docstring)
    return normalise(np.stack([to_model_size(a, size, crop) for a in x]), softening)


def load_galaxy_zoo_smoke() -> dict[str, np.ndarray]:
    """The bundled real cutouts: RGB uint8 (21, 128, 128, 3), ids, vote fractions (see PROVENANCE_galaxy_zoo.md)."""
    ref = resources.files("astroflax.data") / "files" / GALAXY_ZOO_FILE
    with resources.as_file(ref) as p, np.load(p, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
