"""Experiment configuration: one typed, validated tree per run.

A run is fully described by an :class:`ExperimentConfig`. It is built from, in order: the
task's defaults, a named preset, an optional YAML file and ``--set key=value`` overrides. The
task-specific ``data`` and ``model`` sections are validated by the task's own pydantic models,
so an unknown key anywhere is an error that names it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from astroflax.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class OptimConfig(_Strict):
    """How gradients become updates (an Optax chain)."""

    name: Literal["adamw", "adam", "sgd"] = Field("adamw", description="optimiser")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="decoupled weight decay (adamw)")
    b1: float = Field(0.9, ge=0, lt=1, description="first-moment decay")
    b2: float = Field(0.999, ge=0, lt=1, description="second-moment decay")
    eps: float = Field(1e-8, gt=0, description="numerical epsilon")
    momentum: float = Field(0.9, ge=0, lt=1, description="momentum (sgd)")
    clip_norm: float | None = Field(1.0, gt=0, description="global-norm clipping; null disables")


class ScheduleConfig(_Strict):
    """Learning rate against step."""

    name: Literal["warmup_cosine", "constant"] = Field("warmup_cosine", description="schedule")
    warmup_steps: int = Field(100, ge=0, description="linear warm-up from 0 to the peak")
    end_factor: float = Field(0.01, ge=0, le=1, description="final lr as a fraction of the peak")


class EarlyStoppingConfig(_Strict):
    """Stop when a validation metric stops improving."""

    enabled: bool = True
    metric: str = Field("val_loss", description="metric name as logged, e.g. val_loss, val_accuracy")
    mode: Literal["min", "max"] = "min"
    patience: int = Field(10, ge=1, description="evaluations without improvement before stopping")
    min_delta: float = Field(0.0, ge=0, description="smallest change that counts as improvement")


class TrainConfig(_Strict):
    """The loop: how long, how often to evaluate, log and checkpoint."""

    steps: int | None = Field(None, ge=1, description="total optimiser steps (wins over epochs)")
    epochs: float | None = Field(None, gt=0, description="passes over the training split")
    batch_size: int = Field(64, ge=1, description="global batch size (split over devices)")
    eval_batch_size: int = Field(256, ge=1, description="batch size for evaluation")
    eval_every: int = Field(200, ge=1, description="steps between validation passes")
    log_every: int = Field(50, ge=1, description="steps between metric fetches/logs")
    seed: int = Field(0, description="seeds init, shuffling and dropout")
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    progress: bool = Field(True, description="show a progress bar on a terminal")

    @model_validator(mode="after")
    def _one_length(self) -> "TrainConfig":
        if self.steps is None and self.epochs is None:
            raise ValueError("set train.steps or train.epochs")
        return self


class CheckpointConfig(_Strict):
    """Orbax checkpointing and retention."""

    every: int = Field(200, ge=1, description="steps between checkpoints")
    keep_latest: int = Field(2, ge=1, description="latest checkpoints kept")
    keep_best: int = Field(1, ge=0, description="best checkpoints kept (by metric)")
    metric: str = Field("val_loss", description="metric ranking the best checkpoints")
    mode: Literal["min", "max"] = "min"
    async_save: bool = Field(True, description="write checkpoints in the background")


class ExperimentConfig(_Strict):
    """Everything that decides a run."""

    task: str
    name: str | None = Field(None, description="run name; default <task>-<preset>")
    run_dir: str | None = Field(None, description="run directory; default runs/<name>")
    preset: str | None = None
    data: dict[str, Any] = Field(default_factory=dict, description="task data options")
    model: dict[str, Any] = Field(default_factory=dict, description="task model options")
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(steps=1000))
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir or Path("runs") / (self.name or f"{self.task}-{self.preset or 'custom'}"))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------------------- merging


def deep_merge(base: dict, override: dict) -> dict:
    """Recursively merge ``override`` into a copy of ``base`` (dicts merge, the rest replaces)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict:
    """Turn ``a.b.c=value`` into ``{"a": {"b": {"c": value}}}``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. optim.lr=3e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: empty key; expected KEY=VALUE, e.g. optim.lr=3e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node: dict = {}
    cursor = node
    parts = key.split(".")
    for part in parts[:-1]:
        cursor[part] = {}
        cursor = cursor[part]
    cursor[parts[-1]] = value
    return node


def load_yaml_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path}: not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem: dotted key, offending value, what is allowed."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (prefix.split(".") if prefix else []) + list(err["loc"]))
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{loc}' (value {value!r})")
        elif err["type"] == "missing":
            lines.append(f"config key '{loc}' is required")
        else:
            shown = value if not isinstance(value, dict) else "{...}"
            lines.append(f"config key '{loc}' = {shown!r}: {err['msg']}")
    return "; ".join(lines)


def validate_section(cls: type[BaseModel], values: dict, prefix: str) -> BaseModel:
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix)) from None


def build_config(
    task_name: str,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    extra: dict | None = None,
    base: dict | None = None,
) -> ExperimentConfig:
    """Resolve task defaults + preset + YAML file + overrides into a validated config.

    ``base`` (a run's saved config) replaces defaults + preset, so that resuming a run needs
    no flags beyond ``--run-dir``; anything given explicitly is still applied on top of it.
    """
    from astroflax.tasks import get_task

    task = get_task(task_name)
    file_values = load_yaml_file(config_file) if config_file else {}
    if base is not None:
        if preset and preset != base.get("preset"):
            raise ConfigError(
                f"--preset {preset!r}: this run directory was created with preset {base.get('preset')!r}; "
                "use another --run-dir for a different preset"
            )
        raw = dict(base)
    else:
        raw = deep_merge({"task": task.name}, task.defaults)
        preset = preset or file_values.get("preset") or "quick"
        if preset not in task.presets:
            raise ConfigError(
                f"preset {preset!r} is not defined for task {task.name!r}; choose from {sorted(task.presets)}"
            )
        raw = deep_merge(raw, task.presets[preset])
        raw["preset"] = preset
    raw = deep_merge(raw, file_values)
    if raw.get("task") != task.name:
        raise ConfigError(f"config key 'task' = {raw.get('task')!r} but the command asked for task {task.name!r}")
    for text in overrides:
        raw = deep_merge(raw, parse_override(text))
    if extra:
        raw = deep_merge(raw, extra)
    return finalize_config(raw)


def finalize_config(raw: dict) -> ExperimentConfig:
    """Validate a raw dict (e.g. a saved config.yaml), including the task's own sections."""
    from astroflax.tasks import get_task

    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    task = get_task(cfg.task)
    data = validate_section(task.data_config, cfg.data, "data")
    model = validate_section(task.model_config, cfg.model, "model")
    cfg.data = data.model_dump(mode="json")
    cfg.model = model.model_dump(mode="json")
    return cfg
