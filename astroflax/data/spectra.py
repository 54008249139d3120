"""Stellar spectra: Pickles templates, a vectorised spectrum simulator and user-spectrum reading.

The bundled templates (``files/pickles_dwarfs.npz``, see ``PROVENANCE_pickles.md``) sit on a
log-spaced "working" grid (3500-9500 A, 2048 pixels) so that a radial velocity is a shift and a
Gaussian line-spread function (LSF) of constant resolving power R is a convolution with a kernel
of constant width. :func:`simulate` turns (template pair, mix weight, RV, R, E(B-V), S/N) into
observed, continuum-normalised spectra on the model grid, for many spectra at once with numpy;
everything random comes from one ``numpy.random.Generator``, so a seed fixes the data set.

Spectral-type scale (``scale``): ``class_index + subtype / 10`` with O=0 B=1 A=2 F=3 G=4 K=5
M=6, so O5 = 0.5, G2 = 4.2, M6 = 6.6; one subtype = 0.1 on this scale.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import scipy.fft

from astroflax.data.cache import content_hash
from astroflax.data.checks import ABS_MAX, fits_warnings, show_value
from astroflax.errors import DataError

FILES = Path(__file__).parent / "files"
TEMPLATES_FILE = FILES / "pickles_dwarfs.npz"
CLASS_NAMES = tuple("OBAFGKM")
C_KMS = 299_792.458
R_V = 3.1
USER_SUFFIXES = (".csv", ".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")
WAVE_COLUMNS = ("wavelength", "wave", "lambda", "lam", "wl", "loglam")
#: Accepted wavelengths (Angstrom): from the far UV (10 A) to the far infrared (1e7 A = 1 mm).
WAVE_RANGE = (10.0, 1e7)
FLUX_COLUMNS = ("flux", "f_lambda", "flam", "fl")

__all__ = [
    "CLASS_NAMES",
    "Templates",
    "load_templates",
    "model_grid",
    "ccm89_extinction",
    "normalise_continuum",
    "simulate",
    "sample_mixtures",
    "spectral_type",
    "read_spectrum",
    "resample_to_grid",
    "load_user_spectra",
]


# ----------------------------------------------------------------------------- templates


@dataclasses.dataclass(frozen=True)
class Templates:
    """Template fluxes ``(T, P)`` on the log-spaced ``wavelength`` grid (Angstrom) and their labels."""

    wavelength: np.ndarray
    flux: np.ndarray
    name: np.ndarray
    class_index: np.ndarray
    subtype: np.ndarray
    scale: np.ndarray
    metallicity: np.ndarray
    digest: str

    def __len__(self) -> int:
        return len(self.name)

    @property
    def base_name(self) -> np.ndarray:
        """Names without the metallicity suffix (``G5V-ZPOOR`` -> ``G5V``)."""
        return np.array([n.split("-")[0] for n in self.name])


@functools.cache
def load_templates(path: str | Path = TEMPLATES_FILE) -> Templates:
    """The bundled Pickles dwarfs, each scaled to median flux 1 (so that mixes weight them equally)."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as d:
        flux = d["flux"].astype(np.float32)
        flux = flux / np.median(flux, axis=1, keepdims=True)
        out = Templates(
            wavelength=d["wavelength"].astype(np.float64),
            flux=flux,
            name=d["name"].astype(str),
            class_index=d["class_index"].astype(np.int32),
            subtype=d["subtype"].astype(np.float32),
            scale=d["scale"].astype(np.float32),
            metallicity=d["metallicity"].astype(np.int8),
            digest=content_hash(path.read_bytes(), length=12),
        )
    return out


def model_grid(wave_min: float = 3800.0, wave_max: float = 9000.0, num_pixels: int = 1024) -> np.ndarray:
    """The model's input wavelengths: ``num_pixels`` log-spaced pixel centres (Angstrom)."""
    return np.exp(np.linspace(np.log(wave_min), np.log(wave_max), num_pixels))


def _pixel_edges(grid: np.ndarray) -> np.ndarray:
    """Edges of log-spaced pixels (geometric midpoints, extrapolated by half a pixel at both ends)."""
    ln = np.log(grid)
    half = 0.5 * (ln[1] - ln[0])
    return np.exp(np.concatenate([[ln[0] - half], 0.5 * (ln[1:] + ln[:-1]), [ln[-1] + half]]))


def spectral_type(scale: float, class_index: int | None = None) -> str:
    """``4.23 -> 'G2.3'``. With ``class_index`` the subtype is clipped into that class (0.0-9.9)."""
    cls = int(np.clip(np.floor(scale + 1e-6), 0, 6)) if class_index is None else int(class_index)
    sub = float(np.clip((scale - cls) * 10.0, 0.0, 9.9))
    return f"{CLASS_NAMES[cls]}{sub:.1f}"


# ----------------------------------------------------------------------------- physics


def ccm89_extinction(wavelength: np.ndarray, r_v: float = R_V) -> np.ndarray:
    """A(lambda) / A(V) of Cardelli, Clayton & Mathis (1989, ApJ 345, 245), eqs. 2-3.

    Implemented for the infrared (0.3 <= x < 1.1 per micron) and optical/NIR (1.1 <= x <= 3.3)
    pieces, x = 1 / lambda[micron], i.e. 3030-33000 A; outside that range a DataError-free
    extrapolation of the nearest piece is used. A(lambda) = E(B-V) * R_V * (a + b / R_V).
    """
    x = 1.0e4 / np.asarray(wavelength, dtype=np.float64)
    a = np.empty_like(x)
    b = np.empty_like(x)
    ir = x < 1.1
    a[ir] = 0.574 * x[ir] ** 1.61
    b[ir] = -0.527 * x[ir] ** 1.61
    y = x[~ir] - 1.82
    a[~ir] = np.polyval([0.32999, -0.77530, 0.01979, 0.72085, -0.02427, -0.50447, 0.17699, 1.0], y)
    b[~ir] = np.polyval([-2.09002, 5.30260, -0.62251, -5.38434, 1.07233, 2.28305, 1.41338, 0.0], y)
    return a + b / r_v


def normalise_continuum(flux: np.ndarray, wavelength: np.ndarray, method: str = "median") -> np.ndarray:
    """Remove the flux scale (``median``: divide by the median) or the continuum shape too.

    ``poly``: divide by a cubic in log-wavelength fitted to the upper envelope (three passes,
    each dropping pixels more than 1 sigma below the fit, i.e. absorption lines), vectorised over
    rows. ``median`` keeps the colour (temperature) information; ``poly`` keeps only lines.
    """
    flux = np.asarray(flux, dtype=np.float32)
    med = np.median(flux, axis=-1, keepdims=True)
    med = np.where(np.abs(med) > 0, med, 1.0)
    if method == "median":
        return (flux / med).astype(np.float32)
    if method != "poly":
        raise ValueError(f"normalisation method must be 'median' or 'poly', got {method!r}")
    f = (flux / med).astype(np.float64)
    t = np.linspace(-1.0, 1.0, flux.shape[-1])
    basis = np.polynomial.legendre.legvander(t, 3)  # (P, 4)
    w = np.ones_like(f)
    for _ in range(3):
        ata = np.einsum("np,pi,pj->nij", w, basis, basis) + 1e-9 * np.eye(4)
        atb = np.einsum("np,pi,np->ni", w, basis, f)
        fit = np.einsum("ni,pi->np", np.linalg.solve(ata, atb[..., None])[..., 0], basis)
        resid = f - fit
        sd = np.sqrt(np.sum(w * resid**2, axis=-1, keepdims=True) / np.maximum(w.sum(-1, keepdims=True), 1))
        w = (resid > -sd).astype(np.float64)
    fit = np.where(np.abs(fit) > 1e-3, fit, 1e-3)
    return (f / fit).astype(np.float32)


def simulate(
    templates: Templates | tuple[np.ndarray, np.ndarray],
    idx_a: np.ndarray,
    idx_b: np.ndarray,
    weight: np.ndarray,
    rv: np.ndarray,
    resolution: np.ndarray,
    ebv: np.ndarray,
    snr: np.ndarray,
    grid: np.ndarray,
    rng: np.random.Generator | None,
    normalise: str | None = "median",
    chunk: int = 1024,
) -> np.ndarray:
    """Observed spectra ``(N, len(grid))`` float32, one per entry of the parameter arrays.

    Per spectrum: mix ``(1 - weight) * T[idx_a] + weight * T[idx_b]`` on the log working grid;
    convolve with a Gaussian LSF of FWHM lambda/R times a box of one model pixel (pixel
    integration), both as one transfer function in Fourier space (edge-padded, so no wrap-around);
    Doppler shift by ``rv`` km/s (relativistic) while interpolating onto ``grid``; redden by
    ``ebv`` with CCM89, R_V = 3.1, at the observed wavelength; add Gaussian noise whose
    sigma follows photon statistics (sigma^2 ~ flux + 1% of the median) scaled so that
    median(flux / sigma) = ``snr`` exactly (``snr`` <= 0 or ``rng`` None: no noise); finally
    :func:`normalise_continuum` (``normalise`` None: skip).
    """
    if isinstance(templates, Templates):
        wave, tflux = templates.wavelength, templates.flux
    else:
        wave, tflux = templates
    ln0 = np.log(wave[0])
    dln = (np.log(wave[-1]) - ln0) / (len(wave) - 1)
    grid = np.asarray(grid, dtype=np.float64)
    beta_max = float(np.max(np.abs(rv), initial=0.0)) / C_KMS
    if grid[0] / (1 - beta_max) < wave[0] * (1 + beta_max) or grid[-1] * (1 + beta_max) > wave[-1] * (1 - beta_max):
        raise ValueError(
            f"model grid {grid[0]:.0f}-{grid[-1]:.0f} A plus |RV| <= {beta_max * C_KMS:.0f} km/s "
            f"exceeds the templates' {wave[0]:.0f}-{wave[-1]:.0f} A"
        )
    n = len(idx_a)
    out = np.empty((n, len(grid)), np.float32)
    pad = 96
    nfft = len(wave) + 2 * pad
    freq = np.fft.rfftfreq(nfft).astype(np.float32)  # cycles per working pixel
    pix_model = np.log(grid[-1] / grid[0]) / (len(grid) - 1) / dln  # model pixel in working pixels
    box = np.sinc(freq * pix_model).astype(np.float32)
    # 10^(-0.4 A) = exp(-0.4 ln10 E(B-V) R_V k(lambda))
    red_curve = (-0.4 * np.log(10.0) * R_V * ccm89_extinction(grid)).astype(np.float32)
    grid_pos = ((np.log(grid) - ln0) / dln).astype(np.float32)  # grid in working pixels
    for s in range(0, n, chunk):
        sl = slice(s, min(s + chunk, n))
        w = np.asarray(weight[sl], np.float32)[:, None]
        f = (1.0 - w) * tflux[idx_a[sl]] + w * tflux[idx_b[sl]]
        # LSF: FWHM = lambda / R  ->  sigma in ln(lambda) = 1 / (2.3548 R), in working pixels / dln.
        sigma = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)) * np.asarray(resolution[sl], np.float64)) / dln
        arg = (np.pi * sigma.astype(np.float32))[:, None] * freq[None, :]
        transfer = np.exp(-2.0 * arg * arg) * box[None, :]
        fp = np.pad(f.astype(np.float32), ((0, 0), (pad, pad)), mode="edge")
        f = scipy.fft.irfft(scipy.fft.rfft(fp, axis=1) * transfer, n=nfft, axis=1)[:, pad:-pad]
        # Doppler: observed lambda on the grid came from rest lambda / (1 + z).
        beta = np.asarray(rv[sl], np.float64) / C_KMS
        ln1z = 0.5 * np.log((1.0 + beta) / (1.0 - beta))
        pos = grid_pos[None, :] - (ln1z / dln).astype(np.float32)[:, None]
        i0 = np.clip(np.floor(pos).astype(np.int64), 0, len(wave) - 2)
        frac = (pos - i0).astype(np.float32)
        f = np.take_along_axis(f, i0, 1) * (1.0 - frac) + np.take_along_axis(f, i0 + 1, 1) * frac
        f = f * np.exp(np.asarray(ebv[sl], np.float32)[:, None] * red_curve[None, :])
        if rng is not None:
            sn = np.asarray(snr[sl], np.float64)
            med = np.median(f, axis=1, keepdims=True)
            raw = np.sqrt(np.maximum(f, 0.0) + 0.01 * np.abs(med))
            scale = np.median(f / raw, axis=1, keepdims=True) / np.where(sn > 0, sn, 1.0)[:, None]
            noise = rng.standard_normal(f.shape, dtype=np.float32) * (raw * scale).astype(np.float32)
            f = f + np.where(sn[:, None] > 0, noise, 0.0)
        out[sl] = f if normalise is None else normalise_continuum(f, grid, normalise)
    return out


def sample_mixtures(
    scales: np.ndarray, n: int, rng: np.random.Generator, mix_fraction: float = 0.5, classes: int = 7
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Template pairs between adjacent spectral-type levels: ``(idx_a, idx_b, weight, scale)``.

    Classes are drawn uniformly (balanced data), then a target scale uniformly within that
    class's part of the template range, bracketed by the nearest template levels (a level is a
    distinct scale; metallicity variants of one level are picked at random). With probability
    ``1 - mix_fraction`` the target snaps to the nearer level, i.e. a pure template. The label is
    the interpolated scale ``(1 - w) s_a + w s_b``; the class is its integer part.
    """
    scales = np.asarray(scales, np.float64)
    levels = np.unique(scales)
    present = np.unique(np.floor(levels + 1e-6).astype(int))
    cls = rng.choice(present, size=n)
    lo = np.maximum(cls, levels[0])
    hi = np.minimum(cls + 1.0 - 1e-6, levels[-1])
    target = lo + rng.random(n) * np.maximum(hi - lo, 0.0)
    k = np.clip(np.searchsorted(levels, target, side="right") - 1, 0, max(len(levels) - 2, 0))
    kb = np.minimum(k + 1, len(levels) - 1)
    la, lb = levels[k], levels[kb]
    w = np.where(lb > la, (target - la) / np.where(lb > la, lb - la, 1.0), 0.0)
    pure = rng.random(n) >= mix_fraction
    w = np.where(pure, np.round(w), w)
    # A random member (metallicity variant) of each chosen level, vectorised.
    order = np.argsort(scales, kind="stable")
    level_of = np.searchsorted(levels, scales[order])
    start = np.searchsorted(level_of, np.arange(len(levels)))
    count = np.bincount(level_of, minlength=len(levels))
    pick = lambda lev: order[start[lev] + (rng.random(len(lev)) * count[lev]).astype(np.int64)]  # noqa: E731
    idx_a, idx_b = pick(k), pick(kb)
    label = (1.0 - w) * scales[idx_a] + w * scales[idx_b]
    return idx_a, idx_b, w.astype(np.float32), label.astype(np.float32)


# ----------------------------------------------------------------------------- user spectra


def _check_values(wave: np.ndarray, flux: np.ndarray, where: str, max_nan_fraction: float) -> tuple:
    wave = np.asarray(wave, np.float64).ravel()
    flux = np.asarray(flux, np.float64).ravel()
    if len(wave) != len(flux):
        raise DataError(f"{where}: {len(wave)} wavelengths but {len(flux)} flux values")
    if len(wave) < 2:
        raise DataError(f"{where}: need at least 2 spectrum pixels, got {len(wave)}")
    bad = ~np.isfinite(wave) | ~np.isfinite(flux)
    if bad.sum() > max_nan_fraction * len(wave):
        raise DataError(
            f"{where}: {int(bad.sum())} of {len(wave)} pixels are NaN/inf "
            f"({bad.mean():.0%}; at most {max_nan_fraction:.0%} allowed)"
        )
    good = np.flatnonzero(~bad)
    for name, values, ok, expected in (
        ("wavelength", wave, (wave >= WAVE_RANGE[0]) & (wave <= WAVE_RANGE[1]),
         f"a wavelength in Angstrom in [{WAVE_RANGE[0]:g}, {WAVE_RANGE[1]:g}]"),
        ("flux", flux, np.abs(flux) <= ABS_MAX, f"a flux with |flux| <= {ABS_MAX:g} (rescale the spectrum)"),
    ):
        out = np.flatnonzero(~ok[good])
        if out.size:
            r = int(good[out[0]])
            more = f" [{out.size} bad rows in total]" if out.size > 1 else ""
            raise DataError(f"{where}: {name} at row {r + 1} is {show_value(values[r])}; expected {expected}{more}")
    step = np.diff(wave[good])
    if np.any(step <= 0):
        j = int(np.flatnonzero(step <= 0)[0])
        r0, r1 = good[j], good[j + 1]
        raise DataError(
            f"{where}: wavelengths must increase, but row {r0 + 1} has {wave[r0]:g} and row {r1 + 1} has {wave[r1]:g}"
        )
    return wave[good], flux[good]


def _pick_column(columns: list[str], wanted: tuple[str, ...], what: str, where: str) -> str:
    lower = {c.strip().lower(): c for c in columns}
    for name in wanted:
        if name in lower:
            return lower[name]
    raise DataError(f"{where}: no {what} column; expected one of {list(wanted)}, found {list(columns)}")


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    try:
        df = pd.read_csv(path, comment="#")
    except Exception as exc:  # pandas raises many types for malformed text
        raise DataError(f"{path}: cannot read as CSV ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    cols = [str(c) for c in df.columns]
    wcol = _pick_column(cols, WAVE_COLUMNS, "wavelength", str(path))
    fcol = _pick_column(cols, FLUX_COLUMNS, "flux", str(path))
    arrays = []
    for col in (wcol, fcol):
        vals = pd.to_numeric(df[col], errors="coerce")
        text = vals.isna() & df[col].notna() & ~df[col].astype(str).str.strip().str.lower().isin(["nan", "inf", "-inf"])
        if text.any():
            row = int(np.flatnonzero(text.to_numpy())[0])
            raise DataError(f"{path}: column {col!r} row {row + 1} is {df[col].iloc[row]!r}, expected a number")
        arrays.append(vals.to_numpy(np.float64))
    wave, flux = arrays
    if wcol.strip().lower() == "loglam":
        with np.errstate(over="ignore"):
            wave = 10.0**wave
    return wave, flux


def _read_fits(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from astropy.io import fits

    def first_line(exc: BaseException) -> str:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

    try:
        with fits_warnings(path):
            hdul = fits.open(path, memmap=False)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot read as FITS ({type(exc).__name__}: {first_line(exc)})") from None
    try:
        with hdul, fits_warnings(path):
            return _spectrum_from_hdus(path, hdul)
    except DataError:
        raise
    except Exception as exc:  # a truncated or damaged file fails when its data are read (e.g. "cannot reshape")
        raise DataError(f"{path}: cannot read the FITS data, the file is truncated or damaged "
                        f"({type(exc).__name__}: {first_line(exc)})") from None


def _spectrum_from_hdus(path: Path, hdul) -> tuple[np.ndarray, np.ndarray]:
    from astropy.io import fits

    for i, hdu in enumerate(hdul):
        if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)) and hdu.data is not None:
            cols = list(hdu.columns.names)
            where = f"{path} HDU {i}"
            wcol = _pick_column(cols, WAVE_COLUMNS, "wavelength", where)
            fcol = _pick_column(cols, FLUX_COLUMNS, "flux", where)
            try:
                wave = np.asarray(hdu.data[wcol], np.float64).ravel()
                flux = np.asarray(hdu.data[fcol], np.float64).ravel()
            except (TypeError, ValueError):
                raise DataError(f"{where}: columns {wcol!r} and {fcol!r} must be numeric") from None
            if wcol.lower() == "loglam":
                with np.errstate(over="ignore"):
                    wave = 10.0**wave
            return wave, flux
    for i, hdu in enumerate(hdul):
        if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)) and hdu.data is not None:
            data = np.squeeze(np.asarray(hdu.data, np.float64))
            where = f"{path} HDU {i}"
            if data.ndim != 1:
                raise DataError(f"{where}: image spectrum must be 1-D, got shape {hdu.data.shape}")
            h = hdu.header
            if "CRVAL1" not in h or ("CDELT1" not in h and "CD1_1" not in h):
                raise DataError(f"{where}: 1-D image needs WCS keywords CRVAL1 and CDELT1 (or CD1_1)")
            try:
                delt = float(h["CDELT1"] if "CDELT1" in h else h["CD1_1"])
                crval, crpix = float(h["CRVAL1"]), float(h.get("CRPIX1", 1.0))
            except (TypeError, ValueError):
                raise DataError(f"{where}: WCS keywords CRVAL1, CRPIX1 and CDELT1/CD1_1 must be numbers") from None
            pix = np.arange(1, data.size + 1, dtype=np.float64)
            coord = crval + (pix - crpix) * delt
            with np.errstate(over="ignore"):
                wave = 10.0**coord if str(h.get("DC-FLAG", 0)).strip() in ("1", "1.0", "True") else coord
            return wave, data
    raise DataError(f"{path}: no binary table with wavelength/flux columns and no 1-D image spectrum")


def read_spectrum(path: str | Path, max_nan_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Wavelength (Angstrom, increasing) and flux of one CSV or FITS spectrum, NaN pixels dropped."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".csv"):
        wave, flux = _read_csv(path)
    elif name.endswith((".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")):
        wave, flux = _read_fits(path)
    else:
        raise DataError(f"{path}: unsupported file type; expected one of {list(USER_SUFFIXES)}")
    return _check_values(wave, flux, str(path), max_nan_fraction)


def resample_to_grid(wave: np.ndarray, flux: np.ndarray, grid: np.ndarray, where: str = "spectrum") -> np.ndarray:
    """Flux-conserving rebin onto the model's log pixels (mean flux density over each pixel)."""
    edges = _pixel_edges(grid)
    if wave[0] > edges[0] or wave[-1] < edges[-1]:
        raise DataError(
            f"{where}: covers {wave[0]:.1f}-{wave[-1]:.1f} A but the model grid needs {edges[0]:.1f}-{edges[-1]:.1f} A"
        )
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (flux[1:] + flux[:-1]) * np.diff(wave))])
    at = np.interp(edges, wave, cum)
    return ((at[1:] - at[:-1]) / np.diff(edges)).astype(np.float32)


def load_user_spectra(
    path: str | Path, grid: np.ndarray, normalise: str = "median", max_nan_fraction: float = 0.1
) -> tuple[np.ndarray, list[str]]:
    """Spectra ``(N, len(grid))`` from a file or a directory of CSV/FITS files, and their names."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(USER_SUFFIXES))
        if not files:
            raise DataError(f"{path}: no spectrum files ({', '.join(USER_SUFFIXES)}) in this directory")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"{path}: no such file or directory")
    rows = []
    for f in files:
        wave, flux = read_spectrum(f, max_nan_fraction)
        rebinned = resample_to_grid(wave, flux, grid, str(f))
        if not np.median(rebinned) > 0:
            raise DataError(f"{f}: median flux in {grid[0]:.0f}-{grid[-1]:.0f} A is {np.median(rebinned):g}, expected > 0")
        rows.append(rebinned)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        flux = normalise_continuum(np.stack(rows), grid, normalise)
    bad = ~np.isfinite(flux).all(axis=1)
    if bad.any():  # never hand NaN/inf to the model
        f = files[int(np.flatnonzero(bad)[0])]
        raise DataError(f"{f}: the flux is not finite after resampling and continuum normalisation ({normalise}); "
                        "check the flux values of this spectrum")
    return flux, [f.name for f in files]
