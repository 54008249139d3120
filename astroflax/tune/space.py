"""The search space of ``astroflax tune``: a YAML mapping of config keys to Optuna distributions.

::

    optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    train.batch_size: {type: int, low: 32, high: 256, step: 32}
    model.hidden: {type: categorical, choices: [[64, 64], [128, 128]]}
    model.num_components: {type: int, low: 2, high: 8, when: {model.head: mixture}}
    optim.weight_decay: [0.0, 1.0e-4]      # a plain list is a categorical

Validated like the config, before any trial runs: an unknown key, a bad range, or a value the
config would refuse is a one-line error naming the file, key and value. ``when`` makes a key
conditional on another key (sampled earlier in the file, or fixed by the config) having one of
the given values. Sampling is Optuna's (``trial.suggest_*``); this module only translates.
"""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from astroflax.config import (
    ExperimentConfig,
    deep_merge,
    finalize_config,
    load_yaml_file,
)
from astroflax.errors import ConfigError

SAMPLERS = ("tpe", "random", "grid", "cmaes")
GRID_MAX_POINTS = 10_000


class Param(BaseModel):
    """One searched config key."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[Any] | None = None
    when: dict[str, Any] | None = Field(None, description="sample only if these keys have these values")

    @model_validator(mode="after")
    def _consistent(self) -> Param:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("a categorical takes 'choices', not low/high/log/step")
            return self
        if self.choices is not None:
            raise ValueError(f"a {self.type} takes low/high, not 'choices' (use type: categorical)")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} needs 'low' and 'high'")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high must be finite")
        if self.low > self.high:
            raise ValueError(f"low {self.low:g} > high {self.high:g}")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0, got {self.low:g}")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined (Optuna samples either)")
        if self.type == "int":
            for name in ("low", "high", "step"):
                v = getattr(self, name)
                if v is not None and v != int(v):
                    raise ValueError(f"an int needs integer {name}, got {v:g}")
        return self

    def candidates(self) -> list[Any]:
        """Values to check against the config: the choices, or the two ends of the range."""
        if self.type == "categorical":
            return list(self.choices or [])
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]

    def grid(self) -> list[Any] | None:
        """Every value, if the parameter is finite (categorical or stepped); else None."""
        if self.type == "categorical":
            return list(self.choices or [])
        if self.type == "int" and not self.log:
            step = int(self.step or 1)
            return list(range(int(self.low), int(self.high) + 1, step))
        if self.type == "float" and self.step is not None:
            n = math.floor((self.high - self.low) / self.step + 1e-9) + 1
            return [round(self.low + i * self.step, 12) for i in range(n)]
        return None


def _encode(value: Any) -> Any:
    """Optuna's categorical choices are None/bool/int/float/str: a list or mapping (e.g.
    ``model.hidden: [64, 64]``) is stored as its JSON text."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _decode(value: Any, choices: list[Any]) -> Any:
    for c in choices:
        if _encode(c) == value:
            return c
    return value


class SearchSpace:
    """A validated search space for one task's config."""

    def __init__(self, params: dict[str, Param], source: str):
        self.params, self.source = params, source

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_file(cls, path: Path, cfg: ExperimentConfig) -> SearchSpace:
        raw = load_yaml_file(path)
        return cls.from_dict(raw, cfg, str(path))

    @classmethod
    def from_dict(cls, raw: dict, cfg: ExperimentConfig, source: str = "search space") -> SearchSpace:
        if not raw:
            raise ConfigError(f"search space {source}: empty; expected a mapping of config keys to distributions")
        keys = _leaf_keys(cfg.model_dump(mode="json"))
        params: dict[str, Param] = {}
        for key, spec in raw.items():
            key = str(key)
            if key not in keys:
                close = difflib.get_close_matches(key, sorted(keys), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"search space {source}: key {key!r} is not a config key of task {cfg.task!r}{hint}")
            if key in ("task", "name", "run_dir", "preset", "study"):
                raise ConfigError(f"search space {source}: key {key!r} cannot be searched")
            if isinstance(spec, list):
                spec = {"type": "categorical", "choices": spec}
            if not isinstance(spec, dict):
                raise ConfigError(f"search space {source}: key {key!r} = {spec!r}: expected a mapping such as "
                                  "{type: float, low: 1e-4, high: 1e-2, log: true} or a list of choices")
            try:
                params[key] = Param.model_validate(spec)
            except ValidationError as exc:
                raise ConfigError(f"search space {source}: key {key!r}: {_pydantic_message(exc)}") from None
        space = cls(params, source)
        space._check_conditions(keys)
        space._check_values(cfg)
        return space

    def _check_conditions(self, keys: set[str]) -> None:
        seen: list[str] = []
        for key, p in self.params.items():
            for cond in (p.when or {}):
                if cond not in keys:
                    raise ConfigError(f"search space {self.source}: key {key!r}: 'when' names {cond!r}, "
                                      "which is not a config key")
                if cond in self.params and cond not in seen:
                    raise ConfigError(f"search space {self.source}: key {key!r}: 'when' names {cond!r}, which "
                                      "is searched later in the file; list it first")
            seen.append(key)

    def _check_values(self, cfg: ExperimentConfig) -> None:
        """Every choice and both ends of every range must be a value the config accepts."""
        base = cfg.model_dump(mode="json")
        for key, p in self.params.items():
            for value in p.candidates():
                try:
                    finalize_config(deep_merge(base, _nested(key, value)))
                except ConfigError as exc:
                    raise ConfigError(f"search space {self.source}: {key} = {value!r} is refused by the config: "
                                      f"{exc}") from None

    # ----------------------------------------------------------------- sampling
    def grid_space(self) -> dict[str, list[Any]]:
        """Optuna's ``GridSampler`` search space; every key must be finite and unconditional."""
        grid: dict[str, list[Any]] = {}
        for key, p in self.params.items():
            if p.when:
                raise ConfigError(f"--sampler grid: key {key!r} is conditional ('when'); a grid has no "
                                  "conditional keys")
            values = p.grid()
            if values is None:
                raise ConfigError(f"--sampler grid: key {key!r} is a continuous range; give it a 'step' or "
                                  "make it a list of choices")
            grid[key] = [_encode(v) for v in values]
        points = math.prod(len(v) for v in grid.values())
        if points > GRID_MAX_POINTS:
            raise ConfigError(f"--sampler grid: the grid has {points:,} points (more than {GRID_MAX_POINTS:,}); "
                              "give fewer values")
        return grid

    def suggest(self, trial: Any, cfg: ExperimentConfig, grid: bool = False) -> dict[str, Any]:
        """Ask ``trial`` for a value of every active key; returns ``{key: config value}``."""
        base = _leaf_values(cfg.model_dump(mode="json"))
        chosen: dict[str, Any] = {}
        for key, p in self.params.items():
            if p.when and not all(_matches(chosen.get(k, base.get(k)), v) for k, v in p.when.items()):
                continue
            if grid:
                values = p.grid() or []
                chosen[key] = _decode(trial.suggest_categorical(key, [_encode(v) for v in values]), values)
            elif p.type == "categorical":
                choices = list(p.choices or [])
                chosen[key] = _decode(trial.suggest_categorical(key, [_encode(c) for c in choices]), choices)
            elif p.type == "int":
                chosen[key] = trial.suggest_int(key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            else:
                chosen[key] = trial.suggest_float(key, float(p.low), float(p.high), step=p.step, log=p.log)
        return chosen

    def baseline_params(self, cfg: ExperimentConfig, grid: bool = False) -> dict[str, Any] | None:
        """``cfg``'s own values of the searched keys, as Optuna params (for ``enqueue_trial``);
        None when one of them lies outside the space."""
        base = _leaf_values(cfg.model_dump(mode="json"))
        params: dict[str, Any] = {}
        for key, p in self.params.items():
            if p.when and not all(_matches(params.get(k, base.get(k)), v) for k, v in p.when.items()):
                continue
            value = base.get(key)
            if p.type == "categorical" or grid:
                if value not in ((p.grid() if grid else p.choices) or []):
                    return None
                params[key] = _encode(value)
            elif value is None or not (p.low <= float(value) <= p.high):
                return None
            else:
                params[key] = value
        return params

    def decode_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Optuna's stored params (JSON text for list choices) as config values."""
        out = {}
        for key, value in params.items():
            p = self.params.get(key)
            out[key] = _decode(value, (p.grid() or p.choices or []) if p is not None else [])
        return out


def config_with(cfg: ExperimentConfig, values: dict[str, Any], extra: dict | None = None) -> ExperimentConfig:
    """``cfg`` with the dotted ``values`` (and the nested ``extra``) set, validated."""
    raw = cfg.model_dump(mode="json")
    for key, value in values.items():
        raw = deep_merge(raw, _nested(key, value))
    return finalize_config(deep_merge(raw, extra or {}))


def _matches(actual: Any, wanted: Any) -> bool:
    return actual in wanted if isinstance(wanted, list) else actual == wanted


def _nested(key: str, value: Any) -> dict:
    node: Any = value
    for part in reversed(key.split(".")):
        node = {part: node}
    return node


def _leaf_values(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_leaf_values(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _leaf_keys(d: dict) -> set[str]:
    return set(_leaf_values(d))


def _pydantic_message(exc: ValidationError) -> str:
    """A ``Param`` validation error as ``field = value: why`` (or only ``why`` for the whole entry)."""
    parts = []
    for e in exc.errors():
        why = e["msg"].removeprefix("Value error, ")
        loc = ".".join(str(x) for x in e["loc"])
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown field {loc!r} (expected type, low, high, log, step, choices, when)")
        elif loc:
            parts.append(f"{loc} = {e.get('input')!r}: {why}")
        else:
            parts.append(why)
    return "; ".join(parts)
