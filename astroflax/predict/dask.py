"""The chunk function of :mod:`astroflax.predict.stream` mapped over a Dask cluster; HATS via LSDB.

- A table file (Parquet, FITS): each chunk is one Dask task, :func:`astroflax.predict.stream.run_chunk`;
  the worker reads its own row range from the shared file system, loads the model on its first
  task (:func:`astroflax.predict.models.get_model` caches it per process) and writes its part
  file; the driver records progress, so ``--resume`` works as in one process.
- A HATS catalogue directory: opened with ``lsdb.open_catalog``; every HEALPix partition goes
  through the same chunk reader and model (``Catalog.map_partitions``) and the result, with the
  input's ra/dec and ``_healpix_29`` index, is written by ``Catalog.to_hats`` as a HATS catalogue
  that ``lsdb.open_catalog`` opens again (its own ``resume`` continues an interrupted write).

``--dask local:N`` starts a ``distributed.LocalCluster`` of N worker processes with one thread
each; anything else is a scheduler address (``tcp://host:8786``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from astroflax.errors import ConfigError, DataError
from astroflax.predict.models import ModelRef, get_model
from astroflax.predict.sources import Frame
from astroflax.predict.stream import (
    FLAG,
    PROBLEM,
    Job,
    Progress,
    partial_dir,
    predict_frame,
    run_chunk,
)


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"--dask / HATS input need {module}: pip install 'astroflax[scale]'") from None


@contextlib.contextmanager
def dask_client(spec: str | None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``spec`` (``local:N`` or a scheduler address), closed on exit;
    None for no spec (run in this process)."""
    if not spec:
        yield None
        return
    distributed = _require("distributed")
    cluster = None
    if spec.startswith("local:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"--dask {spec}: expected local:N with N >= 1 worker processes")
        # One thread per worker and one XLA thread pool each: N workers use N cores.
        env = {"XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                             "intra_op_parallelism_threads=1").strip(),
               "OMP_NUM_THREADS": "1"}
        cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                           dashboard_address=None, env=env, silence_logs=40)
        client = distributed.Client(cluster)
    else:
        try:
            client = distributed.Client(spec, timeout="20s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(f"--dask {spec}: cannot reach the scheduler ({exc})") from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def chunk_runner(client):
    """``runner(job, todo, progress)`` for :func:`~astroflax.predict.stream.stream_predict`: one
    task per chunk, records yielded as they finish (in any order; the output is merged in order)."""
    distributed = _require("distributed")

    def run(job: Job, todo: list[int], progress: Progress) -> Iterator[dict]:
        tag = uuid.uuid4().hex[:8]
        futures = [client.submit(run_chunk, job, i, pure=False, key=f"astroflax-chunk-{tag}-{i}") for i in todo]
        try:
            for fut in distributed.as_completed(futures):
                yield fut.result()
        finally:
            client.cancel(futures)

    return run


# ------------------------------------------------------------------------------ HATS


def _partition_frame(df, pixel, catalog_dir: str) -> Frame:
    import pandas as pd

    from astroflax.predict.sources import _normalise_columns

    try:
        from hats.io.paths import pixel_catalog_file

        where = Path(str(pixel_catalog_file(catalog_dir, pixel)))
    except Exception:  # noqa: BLE001 - only the name in messages
        where = Path(catalog_dir) / str(pixel)
    flat = pd.DataFrame({c: df[c].to_numpy() for c in df.columns}, index=pd.RangeIndex(len(df)))
    return Frame(where, 0, len(df), _normalise_columns(flat, where))


def predict_partition(df, pixel, model_ref: ModelRef, catalog_dir: str, keep: tuple[str, ...]):
    """One HATS partition -> its predictions, keeping the partition's index (``_healpix_29``)
    and the columns in ``keep`` (ra, dec and the user's ``--keep``)."""
    import pandas as pd

    model = get_model(model_ref)
    frame = _partition_frame(df, pixel, catalog_dir)
    table = predict_frame(model, frame, tuple(k.lower() for k in keep))
    out = table.to_pandas(types_mapper=pd.ArrowDtype)
    for k in keep:  # the catalogue's own names (HATS metadata names ra/dec columns case-sensitively)
        if k.lower() in out.columns and k.lower() != k:
            out = out.rename(columns={k.lower(): k})
    out.index = df.index
    return out


def _text(meta) -> list[str]:
    """Text columns of the output (dictionary-encoded; on float columns that only costs time)."""
    return [str(c) for c, t in meta.dtypes.items() if c != PROBLEM and ("string" in str(t) or t == object)]


def predict_hats(model_ref: ModelRef, input_dir: Path, output: Path, *, keep: tuple[str, ...] = (),
                 resume: bool = False, client: Any = None, progress: bool = True) -> dict[str, Any]:
    """Predict every row of the HATS catalogue ``input_dir`` into the HATS catalogue ``output``."""
    lsdb = _require("lsdb")
    import dask

    from astroflax.predict.stream import check_replaceable

    check_replaceable(output, "hats.properties")
    model = get_model(model_ref)
    catalog = lsdb.open_catalog(str(input_dir))
    info = catalog.hc_structure.catalog_info
    columns = list(catalog.columns)
    lower = {c.lower(): c for c in columns}
    missing = [k for k in keep if k.lower() not in lower]
    if missing:
        raise DataError(f"--keep {missing[0]}: no such column in {input_dir}; columns are: {', '.join(columns)}")
    keep_cols = tuple(dict.fromkeys([info.ra_column, info.dec_column, *[lower[k.lower()] for k in keep]]))
    meta_in = catalog.meta  # an empty partition: the output schema without reading data
    from hats.pixel_math import HealpixPixel

    base = str(getattr(catalog.hc_structure, "catalog_base_dir", None) or input_dir)  # a collection's catalogue
    meta = predict_partition(meta_in, HealpixPixel(0, 0), model_ref, base, keep_cols)
    result = catalog.map_partitions(predict_partition, model_ref, base, keep_cols, meta=meta, include_pixel=True)
    work = partial_dir(output)
    job_file = work.with_name(work.name + ".job.json")  # beside it: LSDB writes only into an empty directory
    fingerprint = {"input": str(Path(input_dir).resolve()), "model": dataclasses.asdict(model_ref),
                   "version": model.source_text, "keep": list(keep_cols)}
    if work.exists():
        if not resume:
            raise ConfigError(f"{work} holds an unfinished prediction; pass --resume to continue it, or delete "
                              "that directory to start again")
        try:
            saved = json.loads(job_file.read_text())
        except (OSError, ValueError):
            saved = None
        if saved != json.loads(json.dumps(fingerprint)):
            raise ConfigError(f"--resume: {work} is the work of another prediction (input, model or --keep "
                              f"differ, or {job_file.name} is missing); delete it to start again")
    else:
        job_file.write_text(json.dumps(fingerprint, indent=1))
    scheduler = {} if client is not None else {"scheduler": "synchronous"}
    with dask.config.set(**scheduler):
        result.write_catalog(str(work), catalog_name=output.name, resume=work.exists(), progress_bar=progress,
                             error_if_empty=False, as_collection=False,
                             write_table_kwargs={"use_dictionary": [PROBLEM, *_text(meta)]})
    if output.exists():
        import shutil

        shutil.rmtree(output) if output.is_dir() else output.unlink()
    os.replace(work, output)
    job_file.unlink(missing_ok=True)
    # the summary: rows and bad rows, from the written partitions' flag column alone
    import pyarrow.dataset as pads

    flags = pads.dataset(str(output / "dataset"), format="parquet").to_table(columns=[FLAG]).column(FLAG).to_numpy()
    return {"rows": len(flags), "bad": int((flags == 1).sum()),
            "partitions": len(catalog.get_healpix_pixels()), "model": model.source_text}
