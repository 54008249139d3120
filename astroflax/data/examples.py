"""Example user data, written from the bundled data in each task's user format.

``astroflax data example TASK --out DIR`` writes what an astronomer would bring (a catalogue, a
folder of spectra or cutouts, visit tables) so that ``astroflax train TASK --data DIR/...``
can be tried from a fresh install, and so that the layout a reader expects can be seen in a
real file rather than only described. The files are plain CSV/FITS/PNG, read back through the
same readers as any user's files; nothing here is used by training on bundled data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from astroflax.errors import ConfigError


def _frame(columns: dict[str, np.ndarray]):
    import pandas as pd

    return pd.DataFrame(columns)


def photoz(out: Path, seed: int = 11) -> tuple[Path, list[str]]:
    """``catalogue.parquet``: the bundled SDSS galaxies as a survey catalogue (``objid``,
    ``mag_{band}``, ``magerr_{band}``, ``zspec``), with the survey sentinel -99 where a band was
    not measured (5 % of u and 1 % of z magnitudes, at random) and a few empty cells."""
    from astroflax.data import photometry as phot

    d = phot.load_bundled()
    rng = np.random.default_rng(seed)
    mag, err = d["mag"].astype(np.float64), d["mag_err"].astype(np.float64)
    for band, frac in ((0, 0.05), (4, 0.01)):
        miss = rng.random(len(mag)) < frac
        mag[miss, band], err[miss, band] = -99.0, -99.0
    empty = rng.random(len(mag)) < 0.002
    mag[empty, 1], err[empty, 1] = np.nan, np.nan
    cols = {"objid": d["object_id"]}
    for j, band in enumerate(phot.BANDS):
        cols[f"mag_{band}"] = mag[:, j]
        cols[f"magerr_{band}"] = err[:, j]
    cols["zspec"] = d["z"].astype(np.float64)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "catalogue.parquet"
    _frame(cols).to_parquet(path, index=False)
    return path, ["--preset", "quick"]


def transients(out: Path, n: int = 1500, seed: int = 0) -> tuple[Path, list[str]]:
    """``lightcurves.csv`` + ``metadata.csv`` (PLAsTiCC layout) for ``n`` bundled objects."""
    from astroflax.data import lightcurves as lc

    lcs = lc.load_bundled_plasticc()
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(lcs), size=min(n, len(lcs)), replace=False))
    rows = np.concatenate([np.arange(lcs.offsets[i], lcs.offsets[i + 1]) for i in keep])
    counts = np.diff(lcs.offsets)[keep]
    out.mkdir(parents=True, exist_ok=True)
    _frame({"object_id": np.repeat(lcs.object_id[keep], counts), "mjd": lcs.mjd[rows],
            "passband": lcs.passband[rows].astype(np.int64), "flux": lcs.flux[rows], "flux_err": lcs.flux_err[rows],
            "detected": lcs.detected[rows].astype(np.int64)}).to_csv(out / "lightcurves.csv", index=False)
    ids = {v: k for k, v in lc.PLASTICC_CLASSES.items()}
    meta = {"object_id": lcs.object_id[keep], "target": [ids[lcs.class_names[j]] for j in lcs.labels[keep]]}
    for j, name in enumerate(lcs.meta_names):
        if name in lc.META_COLUMNS:
            meta[name] = np.where(lcs.meta_missing[keep, j], np.nan, lcs.meta[keep, j])
    _frame(meta).to_csv(out / "metadata.csv", index=False)
    return out, ["--set", "train.steps=300"]


def variables(out: Path, n_per_class: int = 40, seed: int = 7) -> tuple[Path, list[str]]:
    """``visits.csv`` (object_id, mjd, band, mag, err) + ``labels.csv`` (object_id, class) from
    the variable-star simulator, as a survey's forced photometry would give them."""
    from astroflax.data import variable_sim as vs

    sim = vs.simulate(n_per_class, seed)
    mask = sim["mask"]
    obj, visit = np.nonzero(mask)
    start = 55000.0 + np.random.default_rng(seed).uniform(0, 300, len(mask))
    out.mkdir(parents=True, exist_ok=True)
    _frame({"object_id": obj + 1, "mjd": np.round(start[obj] + sim["time"][obj, visit], 5),
            "band": np.array(list(vs.BANDS))[sim["band"][obj, visit]],
            "mag": sim["mag"][obj, visit], "err": sim["mag_err"][obj, visit]}).to_csv(out / "visits.csv", index=False)
    _frame({"object_id": np.arange(1, len(mask) + 1), "class": np.array(vs.CLASSES)[sim["label"]]}).to_csv(
        out / "labels.csv", index=False)
    return out, ["--set", "train.steps=300"]


def morphology(out: Path, per_class: int = 60, seed: int = 3) -> tuple[Path, list[str]]:
    """An ImageFolder (one subfolder of 8-bit PNG cutouts per class) of rendered galaxies."""
    from PIL import Image

    from astroflax.config import build_config
    from astroflax.tasks import get_task

    cfg = build_config("morphology", None, None, [f"data.train_per_class={per_class}", "data.val_per_class=2",
                                                   "data.test_per_class=2", f"data.seed={seed}", "data.cache=false"])
    data = get_task("morphology").load_data(cfg)
    names = data.info["class_names"]
    images, labels = data.splits["train"]["image"], data.splits["train"]["label"]
    for i, (img, label) in enumerate(zip(images, labels)):
        folder = out / names[int(label)].replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        rgb = np.clip(np.asarray(img, np.float64)[..., ::-1], 0, 1)  # g, r, i -> R=i, G=r, B=g
        Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(folder / f"galaxy_{i:05d}.png")
    return out, ["--set", "train.steps=300", "--set", "train.batch_size=32"]


def spectra(out: Path, per_template: int = 12, seed: int = 5) -> tuple[Path, list[str]]:
    """A folder of FITS spectra (binary tables, wavelength ``TUNIT`` nm, flux erg/s/cm2/A, and an
    ``error`` column) + ``labels.csv`` (file, label as an MK type): noisy, Doppler-shifted
    copies of the bundled Pickles dwarfs, a quarter of them covering only the red part of the
    model window, as survey spectra from different set-ups would."""
    from astropy.io import fits

    from astroflax.data.spectra import load_templates, spectral_type

    t = load_templates()
    rng = np.random.default_rng(seed)
    keep = (t.wavelength > 3500) & (t.wavelength < 9500)
    wave, rows = t.wavelength[keep], []
    out.mkdir(parents=True, exist_ok=True)
    for j, name in enumerate(t.name):
        for k in range(per_template):
            z = rng.normal(0, 100.0) / 299792.458  # radial velocity ~100 km/s
            flux = np.interp(wave, wave * (1 + z), t.flux[j][keep])
            snr = rng.uniform(10, 60)
            err = np.full_like(flux, np.median(flux) / snr)
            flux = (flux + err * rng.standard_normal(len(flux))) * 1e-15
            lo = 5200.0 if k % 4 == 3 else 0.0  # red-only set-up: 64% of the model grid
            sel = wave >= lo
            cols = [fits.Column("wavelength", "D", unit="nm", array=wave[sel] / 10.0),
                    fits.Column("flux", "E", unit="erg/(s cm2 Angstrom)", array=flux[sel]),
                    fits.Column("error", "E", unit="erg/(s cm2 Angstrom)", array=err[sel] * 1e-15)]
            file = f"{name}_{k:02d}.fits"
            fits.BinTableHDU.from_columns(cols).writeto(out / file)
            rows.append({"file": file, "label": spectral_type(float(t.scale[j]), int(t.class_index[j])) + "V"})
    import pandas as pd

    pd.DataFrame(rows).to_csv(out / "labels.csv", index=False)
    return out, ["--set", "train.steps=300", "--set", "train.batch_size=32"]


def vae(out: Path, n: int = 5000) -> tuple[Path, list[str]]:
    """``digits.csv``: the bundled digits in the MNIST CSV layout (784 pixels, then the label)."""
    from astroflax.data.digits import load_bundled_mnist

    d = load_bundled_mnist()
    out.mkdir(parents=True, exist_ok=True)
    rows = np.concatenate([d["image"][:n].reshape(-1, 784), d["label"][:n, None]], axis=1).astype(np.int64)
    path = out / "digits.csv"
    np.savetxt(path, rows, fmt="%d", delimiter=",")
    return path, ["--set", "train.steps=500"]


WRITERS: dict[str, Callable[[Path], tuple[Path, list[str]]]] = {
    "photoz": photoz,
    "transients": transients, "variables": variables, "morphology": morphology, "vae": vae, "spectra": spectra,
}


def write_example(task: str, out: str | Path) -> tuple[Path, list[str]]:
    """Write ``task``'s example user data under ``out``; returns the ``--data`` path and the
    settings the suggested training command adds (short runs for a demonstration)."""
    out = Path(out)
    if task not in WRITERS:
        raise ConfigError(f"task {task!r}: no example user data; available for {', '.join(sorted(WRITERS))}")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: already exists and is not empty; choose a new directory")
    return WRITERS[task](out)
