"""Predict at survey scale: stream a catalogue of any size through a trained run or an export.

- :mod:`~astroflax.predict.sources`: an input file read in fixed row ranges (Parquet row
  groups, CSV chunks, FITS memory-mapped slices), so memory does not grow with the input.
- :mod:`~astroflax.predict.tables`: one chunk of rows -> the model's arrays, ids and which rows
  are bad (and why), with the task's own reader (e.g. photoz's column patterns and sentinels).
- :mod:`~astroflax.predict.models`: the model behind a run directory or an export, loaded once
  per process (a Dask worker loads it on its first chunk and reuses it).
- :mod:`~astroflax.predict.stream`: chunk -> predictions -> part file, the progress record that
  makes ``--resume`` possible, and the final rename (never a partial file under the final name).
- :mod:`~astroflax.predict.dask`: the same chunk function mapped over a Dask cluster, and HATS
  catalogues read and written with LSDB.

``docs/predict_at_scale.md`` is the user's guide.
"""

from __future__ import annotations
