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

import functools
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


Stochastic = bool | Callable[[Any], bool]


def _forward_fns(make_forward_fn: ForwardBuilder, loss: Callable, output: Callable, stochastic: Stochastic,
                 fields: dict[str, Any]) -> dict[str, Any]:
    """Loss, prediction and MC-dropout builders derived from one forward builder.

    ``loss(outputs, batch) -> (loss, metrics)`` and ``output(outputs) -> array`` say what the
    task kind does with the forward pass; ``stochastic`` (or ``stochastic(cfg)``) says whether
    MC-dropout applies (dropout, and no batch norm, whose statistics would depend on the batch).
    """
    if stochastic and "make_predict_fn" in fields and "make_predict_stochastic_fn" not in fields:
        raise ValueError("a task that overrides make_predict_fn and is stochastic also gives make_predict_stochastic_fn")

    def make_loss_fn(cfg, info):
        forward = make_forward_fn(cfg, info)
        return lambda model, batch, rng, train: loss(forward(model, batch, train, rng), batch)

    def make_predict_fn(cfg, info):
        forward = make_forward_fn(cfg, info)
        return lambda model, batch: output(forward(model, batch, False, None))

    def make_predict_stochastic_fn(cfg, info):
        if not (stochastic(cfg) if callable(stochastic) else stochastic):
            return None
        forward = make_forward_fn(cfg, info)
        return lambda model, batch, rng: output(forward(model, batch, True, rng))

    return {"make_loss_fn": make_loss_fn, "make_predict_fn": make_predict_fn,
            "make_predict_stochastic_fn": make_predict_stochastic_fn if stochastic else None}


def _build(name: str, description: str, kind: Kind, presets, defaults: dict, fields: dict, **extra: Any) -> Task:
    if "make_score_fn" in fields:
        defaults.pop("score")
    return Task(name=name, description=description, kind=kind, presets=_presets(name, presets),
                **extra, **{**defaults, **fields})


def classification_task(
    name: str,
    description: str,
    *,
    make_logits_fn: ForwardBuilder,
    id_name: str = "id",
    stochastic: Stochastic = False,
    extra_columns: Callable[[Any, dict], list[str]] | None = None,
    presets: dict | str | Path | None = None,
    **fields: Any,
) -> Task:
    """A classifier from ``make_logits_fn(cfg, info) -> logits(model, batch, train, rng)``.

    ``fields`` are the remaining :class:`Task` fields (data_config, model_config, load_data,
    build_model, load_inputs, ...); any of the derived ones (``make_loss_fn``, ``score``,
    ``report``, ``format_predictions``...) may be given to override the default.
    """

    def output_columns(cfg, info):
        cols = [f"p_{c}" for c in info["class_names"]]
        return cols + (list(extra_columns(cfg, info)) if extra_columns else [])

    defaults = {
        **_forward_fns(make_logits_fn, classify.weighted_cross_entropy, lambda logits: jax.nn.softmax(logits, axis=-1),
                       stochastic, fields),
        "score": classify.score,
        "report": classify.report,
        "format_predictions": functools.partial(classify.format_predictions, id_name=id_name),
        "output_columns": output_columns,
    }
    return _build(name, description, "classifier", presets, defaults, fields)


def regression_task(
    name: str,
    description: str,
    *,
    make_forward_fn: ForwardBuilder,
    num_components: Callable[[Any], int] = lambda cfg: 1,
    target: str = "y",
    id_name: str = "id",
    stochastic: Stochastic = False,
    presets: dict | str | Path | None = None,
    **fields: Any,
) -> Task:
    """A regressor with a Gaussian-mixture output from ``make_forward_fn(cfg, info)``.

    The forward function returns ``(logits, means, log_sigmas)``, each ``(B, K)`` with
    ``K = num_components(cfg)``; the target is ``batch[target]``. The default loss is the
    mixture NLL; pass ``make_loss_fn`` for another (see :func:`regress.distribution_loss`).
    """
    defaults = {
        **_forward_fns(make_forward_fn, lambda out, batch: regress.distribution_loss(out, batch[target], batch),
                       regress.pack, stochastic, fields),
        "score": functools.partial(regress.score, target=target),
        "report": functools.partial(regress.report, target=target),
        "format_predictions": functools.partial(regress.format_predictions, id_name=id_name, target=target),
        "output_columns": lambda cfg, info: regress.packed_columns(target, num_components(cfg)),
    }
    return _build(name, description, "regressor", presets, defaults, fields, distribution="gaussian_mixture")
