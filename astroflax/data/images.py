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

import dataclasses
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from astroflax.data.checks import ABS_MAX, cell_error, fits_warnings, show_value
from astroflax.data.tables import DropLog
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
    side = max(1, round(min(h, w) * crop))
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


# ------------------------------------------------------------------------- user data sets

#: Galaxy10 DECaLS (256x256) and Galaxy10 SDSS (69x69) class order (astroNN's ``ans`` 0-9).
GALAXY10_DECALS_NAMES = [
    "disturbed", "merging", "round_smooth", "in_between_round_smooth", "cigar_shaped_smooth", "barred_spiral",
    "unbarred_tight_spiral", "unbarred_loose_spiral", "edge_on_without_bulge", "edge_on_with_bulge",
]
GALAXY10_SDSS_NAMES = [
    "disk_face_on_no_spiral", "smooth_completely_round", "smooth_in_between_round", "smooth_cigar_shaped",
    "disk_edge_on_rounded_bulge", "disk_edge_on_boxy_bulge", "disk_edge_on_no_bulge", "disk_face_on_tight_spiral",
    "disk_face_on_medium_spiral", "disk_face_on_loose_spiral",
]
HDF5_SUFFIXES = (".h5", ".hdf5", ".he5")
FILE_ALIASES = ("filename", "file_name", "path", "image", "image_path", "png_loc")
SPLIT_DIRS = {"train": 0, "val": 1, "valid": 1, "validation": 1, "test": 2}
HDF5_CHUNK = 256  # images resized per read, so a 3.5 GB Galaxy10 file never sits in memory at full size


@dataclasses.dataclass
class UserImages:
    """A user's labelled images at model size (not yet normalised), and what was read and dropped."""

    images: np.ndarray  # (N, S, S, C) float32
    full_scale: np.ndarray  # (N,) pixel-type maximum (255 for 8-bit...) or NaN (FITS, float pixels)
    labels: np.ndarray | None  # int32 class index per image; None when the input carries no labels
    soft: np.ndarray | None  # (N, K) vote fractions normalised to sum 1 (soft labels)
    class_names: list[str]
    ids: list[str]  # file (relative to the input) or "row i" of an HDF5 file
    rows: np.ndarray  # int64 row of each image in the input (file order / table row / HDF5 row)
    split: np.ndarray | None  # uint8 codes from train/val/test folders or a split column, else None
    split_source: str | None
    fmt: str
    rows_read: int
    dropped: DropLog
    more: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def channels(self) -> int:
        return int(self.images.shape[-1])


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    """How to read a user's image set (the image fields of a task's ``data`` section)."""

    size: int
    crop: float = 1.0
    label_column: str = "label"
    file_column: str = "file"
    vote_columns: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()
    image_dir: str | None = None
    skip_unreadable: bool = False
    labels_required: bool = True
    channels: int | None = None  # bands the model expects (prediction); None = whatever the data have
    replicate_grey: bool = False  # 1-band images repeated to ``channels`` (the bundled 3-band model)


def load_user_images(path: str | Path, opt: ImageOptions, files: list[Path] | None = None) -> UserImages:
    """A user's image set: an ImageFolder (one subfolder per class, optionally under train/val/test),
    a table (CSV/TSV/Parquet/FITS... of file, label and optional vote columns) or a Galaxy10-layout
    HDF5 file (``images``, ``ans``). Every image is resized to ``opt.size`` after the centre crop.
    ``files``: only these files of a plain folder ``path`` (prediction in batches)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if files is not None:
        return _from_files(path, files, [f.name for f in files], np.arange(len(files)), None, None, None, None,
                           "image folder", len(files), DropLog(), opt)
    if path.is_dir():
        return _image_folder(path, opt)
    if path.name.lower().endswith(HDF5_SUFFIXES):
        return _galaxy10(path, opt)
    if _suffix(path) in SUPPORTED:  # one image file (prediction)
        return _from_files(path, [path], [path.name], np.zeros(1, np.int64), None, None, None, None, "image file",
                           1, DropLog(), opt)
    from astroflax.data.tables import table_suffix

    if not table_suffix(path):
        raise DataError(f"{path}: unsupported input; expected an image folder, a table (.csv, .parquet, .fits...) "
                        f"of image files, a Galaxy10-layout HDF5 file or an image ({', '.join(SUPPORTED)})")
    return _image_table(path, opt)


def _read_set(files: list[Path], opt: ImageOptions, drops: DropLog) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read and resize ``files``: (images, full scales, indices of the files kept)."""
    imgs, full, kept = [], [], []
    first: tuple[Path, int] | None = None
    for i, f in enumerate(files):
        try:
            arr, fs = read_bands(f)
        except DataError as exc:
            if not opt.skip_unreadable:
                raise
            drops.add("unreadable or invalid image file (data.skip_unreadable = true)", str(exc))
            continue
        c = arr.shape[-1]
        if opt.replicate_grey and c == 1 and opt.channels:
            arr, c = np.repeat(arr, opt.channels, axis=-1), opt.channels
        if opt.channels is not None and c != opt.channels:
            raise DataError(f"{f}: image has {c} band(s); expected {opt.channels}, the bands the model was trained on")
        if first is None:
            first = (f, c)
        elif c != first[1]:
            raise DataError(f"{f}: image has {c} band(s), but {first[0].name} has {first[1]}; "
                            "every image of a data set needs the same bands")
        imgs.append(to_model_size(arr, opt.size, opt.crop))
        full.append(fs)
        kept.append(i)
    if not imgs:
        raise DataError(f"no readable images among {len(files)} file(s) (first: {files[0] if files else 'none'})")
    return np.stack(imgs), np.asarray(full, np.float64), np.asarray(kept, np.int64)


def _from_files(root: Path, files: list[Path], ids: list[str], rows: np.ndarray, labels: np.ndarray | None,
                soft: np.ndarray | None, split: np.ndarray | None, split_source: str | None, fmt: str, rows_read: int,
                drops: DropLog, opt: ImageOptions, class_names: list[str] | None = None, **more: Any) -> UserImages:
    images, full, kept = _read_set(files, opt, drops)
    pick = lambda a: None if a is None else a[kept]
    return UserImages(images=images, full_scale=full, labels=pick(labels), soft=pick(soft),
                      class_names=list(class_names or []), ids=[ids[i] for i in kept], rows=rows[kept],
                      split=pick(split), split_source=split_source, fmt=fmt, rows_read=rows_read, dropped=drops,
                      more=more)


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _image_folder(root: Path, opt: ImageOptions) -> UserImages:
    """ImageFolder: class = subfolder name (sorted, or ``opt.class_names``); optional train/val/test level."""
    drops = DropLog()
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and _visible(p))
    if not subdirs:
        if opt.labels_required:
            raise DataError(f"{root}: no class subfolders; expected the ImageFolder layout (one subfolder of images "
                            f"per class, e.g. {root / 'smooth'}/*.png), a table of image files or a Galaxy10 HDF5 file")
        files = list_image_files(root)
        return _from_files(root, files, [f.name for f in files], np.arange(len(files)), None, None, None, None,
                           "image folder", len(files), drops, opt)
    names = {d.name.lower() for d in subdirs}
    by_split = names <= set(SPLIT_DIRS) and "train" in names
    groups: list[tuple[int | None, Path]] = []
    tops = subdirs if by_split else [root]
    for top in tops:
        loose = [p for p in sorted(top.iterdir()) if p.is_file() and _visible(p)]
        if loose:
            where = f"{top.relative_to(root)}" if top != root else "the top folder"
            drops.add(f"file outside a class subfolder (in {where})", [str(p.relative_to(root)) for p in loose])
        for d in (sorted(p for p in top.iterdir() if p.is_dir() and _visible(p)) if by_split else subdirs):
            groups.append((SPLIT_DIRS[top.name.lower()] if by_split else None, d))
    found = sorted({d.name for _, d in groups})
    class_names = list(opt.class_names) or found
    unknown = [n for n in found if n not in class_names]
    if unknown:
        raise DataError(f"{root}: class folder {unknown[0]!r} is not in data.class_names {class_names}")
    files, labels, split = [], [], []
    for code, d in groups:
        for p in sorted(q for q in d.rglob("*") if q.is_file() and _visible(q) and
                        not any(x.startswith(".") for x in q.relative_to(d).parts)):
            if _suffix(p) not in SUPPORTED:
                drops.add(f"not an image file (expected {', '.join(SUPPORTED)})", str(p.relative_to(root)))
                continue
            files.append(p)
            labels.append(class_names.index(d.name))
            split.append(code if code is not None else 0)
    if not files:
        raise DataError(f"{root}: the class subfolders hold no image files; expected {', '.join(SUPPORTED)}")
    rows_read = len(files) + drops.total
    return _from_files(root, files, [str(p.relative_to(root)) for p in files], np.arange(len(files)),
                       np.asarray(labels, np.int32), None, np.asarray(split, np.uint8) if by_split else None,
                       "train/val/test folders" if by_split else None, "image folder (one subfolder per class)",
                       rows_read, drops, opt, class_names)


def class_index(values: Any, names_cfg: tuple[str, ...], fail: Callable[[int, str, int], DataError],
                 galaxy10: list[str] | None = None) -> tuple[np.ndarray, list[str], str]:
    """Class index per label value, the class names and where they came from.

    Integer labels index ``data.class_names`` (or ``galaxy10``'s names when given and all in
    0-9); otherwise their sorted distinct values name the classes. Text labels: sorted distinct
    values, or the order of ``data.class_names`` (a label not in it is an error).
    """
    import pandas as pd

    s = pd.Series(values)
    missing = s.isna().to_numpy() | (s.astype(str).str.strip() == "").to_numpy()
    if missing.any():
        pos = int(np.flatnonzero(missing)[0])
        raise fail(pos, "expected a class label, got an empty cell", int(missing.sum()))
    num = pd.to_numeric(s, errors="coerce").to_numpy(np.float64)
    if np.isfinite(num).all() and (num == np.round(num)).all():
        ints = num.astype(np.int64)
        names = list(names_cfg) or (galaxy10 or [])
        if names:
            bad = (ints < 0) | (ints >= len(names))
            if bad.any():
                pos = int(np.flatnonzero(bad)[0])
                raise fail(pos, f"expected a class index 0-{len(names) - 1} ({len(names)} class names), "
                                f"got {ints[pos]}", int(bad.sum()))
            return ints.astype(np.int32), [str(n) for n in names], ("data.class_names" if names_cfg else "galaxy10")
        uniq = np.unique(ints)
        return np.searchsorted(uniq, ints).astype(np.int32), [str(v) for v in uniq], "label values"
    text = s.astype(str).str.strip().to_numpy()
    names = list(names_cfg) or sorted(set(text))
    lut = {n: i for i, n in enumerate(names)}
    bad = np.array([t not in lut for t in text])
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise fail(pos, f"expected one of data.class_names {names}, got {text[pos]!r}", int(bad.sum()))
    return np.array([lut[t] for t in text], np.int32), names, "data.class_names" if names_cfg else "label values"


def _image_table(path: Path, opt: ImageOptions) -> UserImages:
    """A table of image files: ``file`` (relative to the table or ``data.image_dir``), ``label`` or vote columns."""
    from astroflax.data.tables import Table, parse_split

    tab = Table(path)
    col = opt.file_column.lower()
    tab.require((col,), {a: col for a in FILE_ALIASES})
    drops = DropLog()
    n = len(tab.df)
    if n == 0:
        raise DataError(f"{path}: the table has no rows")
    labels, soft, names, names_from = None, None, list(opt.class_names), None
    keep = np.ones(n, bool)
    votes_cols = [c.lower() for c in opt.vote_columns]
    if votes_cols:
        tab.require(tuple(votes_cols))
        votes = np.stack([tab.numeric(c) for c in votes_cols], axis=1)
        for j, c in enumerate(votes_cols):
            tab.check_range(c, votes[:, j], "a vote count or fraction", 0.0, None)
        if names and len(names) != len(votes_cols):
            raise DataError(f"data.class_names has {len(names)} names but data.vote_columns {len(votes_cols)} "
                            "columns; give one class name per vote column")
        names, names_from = names or list(votes_cols), "data.vote_columns"
        total = votes.sum(axis=1)
        zero = total <= 0
        if zero.any():
            drops.add(f"votes sum to 0 in {', '.join(votes_cols)} (no soft label)",
                      [tab.where(int(i)) for i in np.flatnonzero(zero)], int(zero.sum()))
            keep &= ~zero
        soft = (votes / np.where(zero, 1.0, total)[:, None]).astype(np.float32)
        labels = soft.argmax(axis=1).astype(np.int32)
    elif opt.label_column.lower() in tab.df.columns:
        lc = opt.label_column.lower()
        labels, names, names_from = class_index(tab.df[lc].to_numpy(object), opt.class_names,
                                                 lambda pos, msg, nb: tab.fail(lc, pos, msg, nb))
    elif opt.labels_required:
        raise DataError(f"{path}: no label column {opt.label_column!r}; give a class per image in it "
                        "(data.label_column), or vote columns (data.vote_columns)")
    split = parse_split(tab)
    base = Path(opt.image_dir) if opt.image_dir else path.parent
    files: list[Path] = []
    raw = tab.df[col]
    for pos in range(n):
        v = raw.iloc[pos]
        if not isinstance(v, str) or not v.strip():
            raise tab.fail(col, pos, f"expected an image file name, got {show_value(v)}")
        p = Path(v.strip()).expanduser()
        p = p if p.is_absolute() else base / p
        if keep[pos] and not p.is_file():
            raise tab.fail(col, pos, f"no such image file {str(p)!r} (relative names are read from "
                                     f"{'data.image_dir' if opt.image_dir else 'the table folder'} {base})")
        files.append(p)
    idx = np.flatnonzero(keep)
    pick = lambda a: None if a is None else a[idx]
    return _from_files(path, [files[i] for i in idx], [str(raw.iloc[i]).strip() for i in idx], idx.astype(np.int64),
                       pick(labels), pick(soft), pick(split), "the 'split' column" if split is not None else None,
                       f"table of image files ({path.suffix.lower().lstrip('.') or 'text'})", n, drops, opt, names,
                       class_names_from=names_from, vote_columns=votes_cols or None)


def _galaxy10(path: Path, opt: ImageOptions) -> UserImages:
    """The Galaxy10 HDF5 layout: ``images`` (N, H, W[, C]) and ``ans`` (N,) class indices."""
    import h5py

    drops = DropLog()
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: cannot read as HDF5, the file is damaged or not HDF5 ({first})") from None
    with f:
        if "images" not in f or not isinstance(f["images"], h5py.Dataset):
            raise DataError(f"{path}: no dataset 'images'; expected the Galaxy10 layout: 'images' (N, H, W[, C]) and "
                            f"'ans' (N,) class labels (found: {', '.join(f.keys()) or 'nothing'})")
        ds = f["images"]
        if ds.ndim not in (3, 4) or ds.dtype.kind not in "uif" or ds.shape[0] == 0:
            raise DataError(f"{path}: dataset 'images' is {ds.dtype}{ds.shape}; expected numbers shaped (N, H, W) or "
                            "(N, H, W, C)")
        n = int(ds.shape[0])
        labels, names, names_from = None, list(opt.class_names), None
        if "ans" in f:
            ans = np.asarray(f["ans"][()])
            if ans.shape != (n,):
                raise DataError(f"{path}: dataset 'ans' has shape {ans.shape}; expected ({n},), one label per image")
            g10 = GALAXY10_SDSS_NAMES if ds.shape[1] == 69 else GALAXY10_DECALS_NAMES
            if ans.dtype.kind == "S":
                ans = np.char.decode(ans, "utf-8", errors="replace")
            labels, names, names_from = class_index(
                ans, opt.class_names, lambda pos, msg, nb: cell_error(path, "ans", f"row {pos} (0-based)", msg, nb), g10)
            if names_from == "galaxy10":
                names_from = "Galaxy10 SDSS (69x69)" if g10 is GALAXY10_SDSS_NAMES else "Galaxy10 DECaLS"
        elif opt.labels_required:
            raise DataError(f"{path}: no dataset 'ans'; training needs one class label per image (Galaxy10 layout)")
        full = {"u": float(np.iinfo(ds.dtype).max) if ds.dtype.kind == "u" else float("nan")}.get(ds.dtype.kind,
                                                                                                 float("nan"))
        c = 1 if ds.ndim == 3 else int(ds.shape[-1])
        if c > MAX_BANDS:
            raise DataError(f"{path}: dataset 'images' has {c} bands (last axis); expected at most {MAX_BANDS}")
        if opt.channels is not None and c != opt.channels and not (opt.replicate_grey and c == 1):
            raise DataError(f"{path}: images have {c} band(s); expected {opt.channels}, the bands the model was trained on")
        out = []
        for start in range(0, n, HDF5_CHUNK):
            block = np.asarray(ds[start:start + HDF5_CHUNK])
            for k, img in enumerate(block):
                arr = check_pixels(img, f"{path}: dataset 'images', row {start + k} (0-based)")
                if c == 3 and ds.dtype.kind == "u":
                    arr = arr[..., ::-1]  # RGB composites -> g, r, i order, as for PNG/JPEG
                if opt.replicate_grey and arr.shape[-1] == 1 and opt.channels:
                    arr = np.repeat(arr, opt.channels, axis=-1)
                out.append(to_model_size(arr, opt.size, opt.crop))
    return UserImages(images=np.stack(out), full_scale=np.full(n, full), labels=labels, soft=None, class_names=names,
                      ids=[f"row {i}" for i in range(n)], rows=np.arange(n, dtype=np.int64), split=None,
                      split_source=None, fmt="HDF5 (Galaxy10 layout: images, ans)", rows_read=n, dropped=drops,
                      more={"class_names_from": names_from})


def options_from(data: Any, **more: Any) -> ImageOptions:
    """:class:`ImageOptions` from a task's ``data`` section (its fields of the same names)."""
    fields = {f.name for f in dataclasses.fields(ImageOptions)}
    own = fields - {"size", "channels", "replicate_grey", "labels_required"}  # set by the caller, not the config
    kw = {k: getattr(data, k) for k in own if hasattr(data, k)}
    for k in ("vote_columns", "class_names"):
        if k in kw:
            kw[k] = tuple(kw[k] or ())
    return ImageOptions(**{"size": data.image_size, **kw, **more})


def band_names(u: UserImages) -> list[str]:
    """Names of the model's input channels: g, r, i for colour composites and 3-band cubes."""
    return ["grey"] if u.channels == 1 else ["g", "r", "i"] if u.channels == 3 else [f"band{i}" for i in range(u.channels)]


def require_finite(images: np.ndarray, ids: list[str], where: str = "") -> None:
    """Never hand NaN/inf to a model: a DataError naming the first image that is not finite."""
    bad = ~np.isfinite(images).reshape(len(images), -1).all(axis=1)
    if bad.any():
        raise DataError(f"{where}{ids[int(np.flatnonzero(bad)[0])]}: pixel values are not finite after resizing and "
                        "scaling; check the image's values")


def split_user_images(u: UserImages, path: str | Path, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Split codes of a labelled image set and the ``info`` facts every image task records
    (source, split sizes and method, class counts, what was dropped and why)."""
    from astroflax.data.splits import SPLIT_NAMES
    from astroflax.data.tables import source_info, split_codes

    codes, method = split_codes(None, u.labels, seed, split_values=u.split)
    if u.split is not None:
        method = f"given by the input ({u.split_source})"
    k = len(u.class_names)
    counts = {name: np.bincount(u.labels[codes == i], minlength=k).tolist() for i, name in enumerate(SPLIT_NAMES)}
    if not counts["train"] or not sum(counts["train"]):
        raise DataError(f"{path}: no training images after the split ({method}); give more images or a split")
    info = {
        "source": source_info(path, u.fmt, u.rows_read, images_used=len(u.ids), **{key: v for key, v in u.more.items()
                                                                                  if v is not None}),
        "split_sizes": {name: int((codes == i).sum()) for i, name in enumerate(SPLIT_NAMES)},
        "split_method": method,
        "dropped": u.dropped.to_info(),
        "class_counts": counts,
        "classes_without_training_images": [n for n, c in zip(u.class_names, counts["train"]) if c == 0],
    }
    return codes, info


def unit_scale(images: np.ndarray, full_scale: np.ndarray) -> np.ndarray:
    """Pixels -> [0, 1] for a Bernoulli likelihood: divided by the pixel type's full scale
    (8-bit: 255), or for float pixels (FITS) stretched per image between its 0.5th and 99.5th
    percentiles (a float image has no fixed range)."""
    x = np.asarray(images, np.float32)
    out = np.empty_like(x)
    for i, fs in enumerate(np.asarray(full_scale, np.float64)):
        if np.isfinite(fs):
            out[i] = x[i] / np.float32(fs)
        else:
            lo, hi = np.percentile(x[i], [0.5, 99.5])
            out[i] = (x[i] - lo) / max(float(hi - lo), 1e-12)
    return np.clip(out, 0.0, 1.0)
