"""Diagnostics before training (``astroflax check``) and the deployment checklist of a run."""

from astroflax.diagnostics.checks import CheckResult, run_diagnostics

__all__ = ["CheckResult", "run_diagnostics", "run_checklist"]


def run_checklist(*args, **kwargs):  # noqa: D103 - lazy: the checklist loads runs and data
    from astroflax.diagnostics.checklist import run_checklist as _run_checklist

    return _run_checklist(*args, **kwargs)


run_checklist.__doc__ = "Deployment checklist of a run; see :func:`astroflax.diagnostics.checklist.run_checklist`."
