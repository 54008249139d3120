"""Export a trained run for serving (``astroflax export``) and run it without the training code.

:mod:`astroflax.export.loader` is standalone (jax + numpy only); :mod:`astroflax.export.writer`
needs the full package. The format is described in ``docs/export_format.md``.
"""

from astroflax.export.loader import (
    FORMAT,
    FORMAT_VERSION,
    ExportedModel,
    ExportFormatError,
    ExportInputError,
    load_export,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ExportedModel",
    "ExportFormatError",
    "ExportInputError",
    "load_export",
    "export_run",
    "predict_rows",
]


def export_run(*args, **kwargs):  # noqa: D103 - lazy: the writer imports the training code
    from astroflax.export.writer import export_run as _export_run

    return _export_run(*args, **kwargs)


export_run.__doc__ = "Export a run's checkpoint; see :func:`astroflax.export.writer.export_run`."


def predict_rows(*args, **kwargs):  # noqa: D103
    from astroflax.export.writer import predict_rows as _predict_rows

    return _predict_rows(*args, **kwargs)


predict_rows.__doc__ = "Prediction rows from an export directory; see :func:`astroflax.export.writer.predict_rows`."
