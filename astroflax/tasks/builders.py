"""Builders that fill in the common parts of a task, so a task file holds only what is its own.

- :func:`classification_task`: the task gives a logits function; the builder adds the
  weighted cross-entropy loss, softmax prediction (and its MC-dropout twin), scores, the
  report, prediction rows with a ``p_<class>`` column per class, and the declaration.
- :func:`regression_task`: the task gives a forward function returning a Gaussian mixture
  ``(logits, means, log_sigmas)``; the builder adds the NLL loss, packed outputs, scores,
  report, ``<target>_mean`` / ``<target>_sigma`` rows and the declaration.
- :func:`task`: anything else (generative models): every function given explicitly.

Presets default to ``astroflax/tasks/presets/<name>.yaml``; a task from another package
passes ``presets=`` (a dict or the path of its own YAML file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import jax

from astroflax.tasks import classify, regress
from astroflax.tasks.base import Kind, Task, load_presets

PRESET_DIR = Path(__file__).parent / "presets"

# (cfg, info) -> fn(model, batch, train, rng) -> logits or a (logits, means, log_sigmas) mixture
ForwardBuilder = Callable[[Any, dict], Callable[..., Any]]


def _presets(name: str, presets: dict | str | Path | None) -> dict[str, dict[str, Any]]:
    if isinstance(presets, dict):
        return presets
    return load_presets(presets if presets is not None else PRESET_DIR / f"{name}.yaml")


def task(name: str, description: str, *, kind: Kind, presets: dict | str | Path | None = None,
         **fields: Any) -> Task:
    """A :class:`Task` with every function given; presets from YAML as for the other builders."""
    return Task(name=name, description=description, kind=kind, presets=_presets(name, presets), **fields)


def classification_task(
    name: str,
    description: str,
    *,
    make_logits_fn: ForwardBuilder,
    id_name: str = "id",
    stochastic: bool = False,
    extra_columns: Callable[[Any, dict], list[str]] | None = None,
    presets: dict | str | Path | None = None,
    **fields: Any,
) -> Task:
    """A classifier from ``make_logits_fn(cfg, info) -> logits(model, batch, train, rng)``.

    ``fields`` are the remaining :class:`Task` fields (data_config, model_config, load_data,
    build_model, load_inputs, ...); any of the derived ones (``make_loss_fn``, ``score``,
    ``report``, ``format_predictions``...) may be given to override the default.
    """

    def make_loss_fn(cfg, info):
        logits = make_logits_fn(cfg, info)

        def loss_fn(model, batch, rng, train):
            return classify.weighted_cross_entropy(logits(model, batch, train, rng), batch)

        return loss_fn

    def make_predict_fn(cfg, info):
        logits = make_logits_fn(cfg, info)
        return lambda model, batch: jax.nn.softmax(logits(model, batch, False, None), axis=-1)

    def make_predict_stochastic_fn(cfg, info):
        logits = make_logits_fn(cfg, info)
        return lambda model, batch, rng: jax.nn.softmax(logits(model, batch, True, rng), axis=-1)

    def output_columns(cfg, info):
        cols = [f"p_{c}" for c in info["class_names"]]
        return cols + (list(extra_columns(cfg, info)) if extra_columns else [])

    defaults = {
        "make_loss_fn": make_loss_fn,
        "make_predict_fn": make_predict_fn,
        "make_predict_stochastic_fn": make_predict_stochastic_fn if stochastic else None,
        "score": classify.score,
        "report": classify.report,
        "format_predictions": lambda probs, ids, info: classify.format_predictions(probs, ids, info, id_name=id_name),
        "output_columns": output_columns,
    }
    if "make_score_fn" in fields:
        defaults.pop("score")
    return Task(name=name, description=description, kind="classifier", presets=_presets(name, presets),
                **{**defaults, **fields})


def regression_task(
    name: str,
    description: str,
    *,
    make_forward_fn: ForwardBuilder,
    num_components: Callable[[Any], int] = lambda cfg: 1,
    target: str = "y",
    id_name: str = "id",
    stochastic: bool = False,
    presets: dict | str | Path | None = None,
    **fields: Any,
) -> Task:
    """A regressor with a Gaussian-mixture output from ``make_forward_fn(cfg, info)``.

    The forward function returns ``(logits, means, log_sigmas)``, each ``(B, K)`` with
    ``K = num_components(cfg)``; the target is ``batch[target]``. The default loss is the
    mixture NLL; pass ``make_loss_fn`` for another (see :func:`regress.distribution_loss`).
    """

    def make_loss_fn(cfg, info):
        forward = make_forward_fn(cfg, info)

        def loss_fn(model, batch, rng, train):
            return regress.distribution_loss(forward(model, batch, train, rng), batch[target], batch)

        return loss_fn

    def make_predict_fn(cfg, info):
        forward = make_forward_fn(cfg, info)
        return lambda model, batch: regress.pack(forward(model, batch, False, None))

    def make_predict_stochastic_fn(cfg, info):
        forward = make_forward_fn(cfg, info)
        return lambda model, batch, rng: regress.pack(forward(model, batch, True, rng))

    def output_columns(cfg, info):
        return regress.packed_columns(target, num_components(cfg))

    defaults = {
        "make_loss_fn": make_loss_fn,
        "make_predict_fn": make_predict_fn,
        "make_predict_stochastic_fn": make_predict_stochastic_fn if stochastic else None,
        "score": regress.score,
        "report": regress.report,
        "format_predictions": lambda out, ids, info: regress.format_predictions(out, ids, info, id_name=id_name),
        "output_columns": output_columns,
    }
    if "make_score_fn" in fields:
        defaults.pop("score")
    return Task(name=name, description=description, kind="regressor", distribution="gaussian_mixture",
                presets=_presets(name, presets), **{**defaults, **fields})

