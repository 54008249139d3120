"""Fine-tuning: parameters restored by path and shape, the rest re-initialised, frozen parts untouched."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pandas as pd
from flax import nnx

from astroflax.finetune import match_params
from astroflax.models.lightcurve import TransientClassifier
from astroflax.train.optim import flat_params

from conftest import TINY_TRANSIENTS, set_args

TINY = [o for o in TINY_TRANSIENTS if not o.startswith(("train.steps", "checkpoint.every", "train.eval_every"))] + [
    "train.steps=8", "checkpoint.every=8", "train.eval_every=8"]


def params_of(n_classes: int, seed: int):
    model = TransientClassifier(n_classes, d_model=16, num_heads=2, num_layers=1, meta_dim=3, rngs=nnx.Rngs(params=seed))
    return nnx.state(model, nnx.Param)


def test_match_restores_same_path_and_shape_only():
    source = {k: np.asarray(v) for k, v in flat_params(params_of(14, 0)).items()}
    fresh = params_of(5, 1)
    fresh_flat = {k: np.asarray(v) for k, v in flat_params(fresh).items()}
    out, report = match_params(source, fresh)
    got = {k: np.asarray(v) for k, v in flat_params(out).items()}
    assert sorted(p.split(" ")[0] for p in report.new) == ["head_out.bias", "head_out.kernel"]
    assert sorted(p.split(" ")[0] for p in report.dropped) == ["head_out.bias", "head_out.kernel"]
    assert len(report.restored) == len(got) - 2
    for k in got:
        if k.startswith("head_out"):
            assert np.array_equal(got[k], fresh_flat[k])  # kept its fresh initialisation
        else:
            assert np.array_equal(got[k], source[k]), k  # restored bit for bit


def write_subset(directory: Path, classes: int = 3, per_class: int = 40) -> None:
    """User data in the PLAsTiCC layout: a few classes of the bundled set, keeping its split."""
    from astroflax.data.lightcurves import load_bundled_plasticc

    lcs = load_bundled_plasticc()
    keep = []
    for c in range(classes):
        for split in (0, 1, 2):
            idx = np.flatnonzero((lcs.labels == c) & (lcs.split == split))
            keep.extend(idx[: per_class if split == 0 else per_class // 2])
    rows = []
    for i in keep:
        a, b = lcs.offsets[i], lcs.offsets[i + 1]
        rows.append(pd.DataFrame({"object_id": lcs.object_id[i], "mjd": lcs.mjd[a:b], "passband": lcs.passband[a:b],
                                  "flux": lcs.flux[a:b], "flux_err": lcs.flux_err[a:b], "detected": lcs.detected[a:b]}))
    directory.mkdir(parents=True)
    pd.concat(rows).to_csv(directory / "lightcurves.csv", index=False)
    meta = pd.DataFrame({"object_id": lcs.object_id[keep], "target": [lcs.class_names[lcs.labels[i]] for i in keep],
                         "split": lcs.split[keep]})
    for j, name in enumerate(lcs.meta_names):
        meta[name] = lcs.meta[keep, j]
    meta.to_csv(directory / "metadata.csv", index=False)


def final_params(run_dir: Path, step: int = 8) -> dict[str, np.ndarray]:
    tree = ocp.StandardCheckpointer().restore((run_dir / "checkpoints" / str(step) / "state").absolute())
    return {k.removesuffix(".value"): np.asarray(v) for k, v in flat_params(jax.device_get(tree["params"])).items()}


def test_finetune_cli_on_a_class_subset(tmp_path, capsys):
    from astroflax.cli import main

    def cli(*args: str) -> tuple[int, str]:  # the real CLI entry point, in-process
        code = 0
        try:
            main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
        return code, capsys.readouterr().err

    source = tmp_path / "source"
    assert cli("train", "transients", "--run-dir", str(source), "--no-evaluate", *set_args(TINY))[0] == 0
    data = tmp_path / "subset"
    write_subset(data)
    new = tmp_path / "ft"
    code, err = cli("finetune", str(source), "--task", "transients", "--data", str(data), "--freeze", "^encoder",
                    "--checkpoint", "latest", "--run-dir", str(new), "--no-evaluate",
                    *set_args(TINY + ["data.use_metadata=false"]))
    assert code == 0, err
    # Without metadata the head's first layer has another input width: re-initialised, the rest restored.
    assert "Restored" in err and "New (re-initialised): 1" in err and "head_fc.kernel" in err
    assert "Dropped from the source: 1" in err
    src, out = final_params(source), final_params(new)
    encoder = [k for k in src if k.startswith("encoder.")]
    assert encoder and all(np.array_equal(out[k], src[k]) for k in encoder)  # restored and frozen: bit for bit
    assert out["head_fc.kernel"].shape != src["head_fc.kernel"].shape
    for k in ("head_fc.bias", "head_out.kernel", "head_out.bias"):  # restored, then trained
        assert out[k].shape == src[k].shape and not np.array_equal(out[k], src[k]), k
    assert (new / "finetune_source.json").is_file() and (new / "config.yaml").is_file()
    code, err = cli("finetune", str(tmp_path / "nope"), "--task", "transients", "--run-dir", str(tmp_path / "x"))
    assert code == 2 and "nope" in err
