"""Hyperparameter search on Optuna (``astroflax tune``): search space, study, trials, report.

Optuna's own log lines and its ExperimentalWarnings (heartbeats, retries, matplotlib plots are
"experimental" APIs in Optuna 5.0) are quietened here: ``tune`` prints one line per trial.
"""

from __future__ import annotations

import warnings


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
