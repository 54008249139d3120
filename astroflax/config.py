"""Experiment configuration: one typed, validated tree per run.

A run is fully described by an :class:`ExperimentConfig`. It is built from, in order: the
defaults below, a named preset of the task (a YAML diff, ``astroflax/tasks/presets/``), an optional YAML file and ``--set key=value`` overrides. The
task-specific ``data`` and ``model`` sections are validated by the task's own pydantic models,
so an unknown key anywhere is an error that names it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from astroflax.errors import ConfigError
from astroflax.tasks import get_task


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LookaheadConfig(_Strict):
    """Lookahead (Zhang et al. 2019) around the chosen optimiser."""

    enabled: bool = Field(False, description="wrap the optimiser in optax.lookahead")
    sync_period: int = Field(6, ge=1, description="fast steps between synchronisations (k)")
    slow_step_size: float = Field(0.5, gt=0, le=1, description="slow-weight interpolation factor (alpha)")


class LrRule(_Strict):
    """One learning-rate multiplier rule: parameters whose path matches ``pattern`` learn ``factor`` x faster."""

    pattern: str = Field(..., description="regular expression searched in the parameter path, e.g. '^head_'")
    factor: float = Field(..., gt=0, description="multiplier on the learning rate of matched parameters")


class LayerDecayConfig(_Strict):
    """Layer-wise learning-rate decay (LLRD) for stacked layers: deeper layers learn faster."""

    factor: float | None = Field(None, gt=0, le=1, description="decay per layer; null disables. Layer i of L gets factor**(L-i)")
    layer_pattern: str = Field(
        r"(?:^|\.)layers\.(\d+)(?:\.|$)", description="regex whose first group is the layer index in the parameter path"
    )
    embed_pattern: str | None = Field(
        None, description="regex of input-side parameters (before layer 0): they get factor**(L+1); others get 1"
    )


class EmaConfig(_Strict):
    """Exponential moving average of the weights (kept in the optimiser state, so checkpointed)."""

    decay: float | None = Field(None, ge=0, lt=1, description="ema <- decay*ema + (1-decay)*params; null disables")
    every: int = Field(1, ge=1, description="update the average every N optimiser updates")
    bn_batches: int = Field(50, ge=1, description="training batches used to recompute batch-norm statistics "
                            "for the EMA weights (--weights ema)")


class SwaConfig(_Strict):
    """Stochastic weight averaging: an equal-weight running mean of the weights from a chosen step."""

    start_step: int | None = Field(None, ge=0, description="first optimiser update included in the average; null disables")
    every: int = Field(1, ge=1, description="add the weights to the average every N optimiser updates")
    bn_batches: int = Field(50, ge=1, description="training batches used to recompute batch-norm statistics at the end")


class LossScaleConfig(_Strict):
    """Dynamic loss scaling for float16 (no effect in other precisions)."""

    init: float = Field(2.0**15, gt=0, description="initial loss scale")
    period: int = Field(2000, ge=1, description="finite steps before the scale grows")
    factor: float = Field(2.0, gt=1, description="growth factor; the scale is divided by it on overflow")
    min_scale: float = Field(1.0, gt=0, description="the scale never drops below this")


class RegularizationConfig(_Strict):
    """Penalties added to the task's loss, and label smoothing passed to classifiers."""

    l2: float = Field(0.0, ge=0, description="adds l2/2 * sum(p**2) over decayed parameters (see optim.decay_mask)")
    grad_norm_penalty: float = Field(0.0, ge=0, description="adds this * ||grad loss||^2 (double backprop, ~2-3x slower)")
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="classifiers: smooth one-hot targets by this (passed as batch['_label_smoothing'])"
    )


class OptimConfig(_Strict):
    """How gradients become updates: one Optax transformation built from these keys (see docs/optimisation.md)."""

    name: Literal["adamw", "adam", "sgd", "rmsprop", "lamb", "lion", "adafactor"] = Field("adamw", description="optimiser")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(
        1e-4, ge=0, description="decoupled weight decay (adamw, lamb, lion, adafactor; adam/sgd/rmsprop ignore it)"
    )
    b1: float = Field(0.9, ge=0, lt=1, description="first-moment decay (adam, adamw, lamb, lion)")
    b2: float = Field(0.999, ge=0, lt=1, description="second-moment decay (adam, adamw, lamb, lion)")
    eps: float = Field(1e-8, gt=0, description="numerical epsilon")
    momentum: float = Field(0.9, ge=0, lt=1, description="momentum (sgd, rmsprop when > 0)")
    nesterov: bool = Field(False, description="Nesterov momentum (sgd, rmsprop)")
    rms_decay: float = Field(0.9, ge=0, lt=1, description="decay of the squared-gradient average (rmsprop)")
    centered: bool = Field(False, description="centred rmsprop")
    clip_norm: float | None = Field(1.0, gt=0, description="global-norm clipping; null disables")
    clip_value: float | None = Field(None, gt=0, description="clip every gradient element to [-v, v]; null disables")
    decay_mask: Literal["auto", "all"] = Field(
        "auto", description="auto: no weight decay on biases, norm scales and 1-d params; all: decay everything"
    )
    no_decay: list[str] = Field(default_factory=list, description="extra regexes of parameter paths without weight decay")
    accumulate_steps: int = Field(1, ge=1, description="gradient accumulation over k micro-batches (optax.MultiSteps)")
    lookahead: LookaheadConfig = Field(default_factory=LookaheadConfig, description="lookahead wrapper")
    lr_multipliers: list[LrRule] = Field(
        default_factory=list, description="[{pattern, factor}]: per-parameter learning-rate multipliers (first match wins)"
    )
    layer_decay: LayerDecayConfig = Field(default_factory=LayerDecayConfig, description="layer-wise lr decay")
    freeze: list[str] = Field(default_factory=list, description="regexes of parameter paths that are not trained")
    train_only: list[str] | None = Field(None, description="if set, every parameter NOT matching one of these is frozen")
    ema: EmaConfig = Field(default_factory=EmaConfig, description="exponential moving average of the weights")
    swa: SwaConfig = Field(default_factory=SwaConfig, description="stochastic weight averaging")
    precision: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="compute dtype; parameters and optimiser state stay float32"
    )
    loss_scale: LossScaleConfig = Field(default_factory=LossScaleConfig, description="dynamic loss scaling (float16)")
    regularization: RegularizationConfig = Field(default_factory=RegularizationConfig, description="loss penalties")

    @model_validator(mode="after")
    def _valid_patterns(self) -> "OptimConfig":
        import re

        pats = [*self.no_decay, *self.freeze, *(self.train_only or []), *(r.pattern for r in self.lr_multipliers),
                self.layer_decay.layer_pattern, *([self.layer_decay.embed_pattern] if self.layer_decay.embed_pattern else [])]
        for p in pats:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"{p!r} is not a valid regular expression ({exc})") from None
        return self


class ScheduleConfig(_Strict):
    """Learning rate against step: an optional linear warm-up joined to a decay (optax.join_schedules)."""

    name: Literal["warmup_cosine", "constant", "linear", "exponential", "cosine", "piecewise"] = Field(
        "warmup_cosine", description="schedule (constant never warms up; the others warm up for warmup_steps)"
    )
    warmup_steps: int = Field(100, ge=0, description="linear warm-up from warmup_start_factor*peak to the peak")
    warmup_start_factor: float = Field(0.0, ge=0, le=1, description="lr at step 0 as a fraction of the peak")
    end_factor: float = Field(0.01, ge=0, le=1, description="final lr as a fraction of the peak (linear/cosine; floor of exponential)")
    decay_steps: int | None = Field(None, ge=1, description="length of the decay after warm-up; null = to the last step")
    decay_rate: float = Field(0.5, gt=0, description="exponential: lr multiplied by this every transition_steps")
    transition_steps: int = Field(1000, ge=1, description="exponential: steps per decay_rate factor")
    staircase: bool = Field(False, description="exponential: decay in discrete jumps")
    boundaries: list[int] = Field(default_factory=list, description="piecewise: steps (absolute) where the lr is rescaled")
    scales: list[float] = Field(default_factory=list, description="piecewise: factor applied at each boundary (cumulative)")

    @model_validator(mode="after")
    def _piecewise(self) -> "ScheduleConfig":
        if len(self.boundaries) != len(self.scales):
            raise ValueError(f"boundaries ({len(self.boundaries)}) and scales ({len(self.scales)}) need the same length")
        if self.boundaries != sorted(self.boundaries) or any(b < 0 for b in self.boundaries):
            raise ValueError("boundaries must be non-negative and increasing")
        return self


class EarlyStoppingConfig(_Strict):
    """Stop when a validation metric stops improving."""

    enabled: bool = True
    metric: str = Field("val_loss", description="metric name as logged, e.g. val_loss, val_accuracy")
    mode: Literal["min", "max"] = "min"
    patience: int = Field(10, ge=1, description="evaluations without improvement before stopping")
    min_delta: float = Field(0.0, ge=0, description="smallest change that counts as improvement")


class NonFiniteConfig(_Strict):
    """What the loop does when training diverges (the step never applies a non-finite update)."""

    max_consecutive: int = Field(
        10, ge=1, description="consecutive skipped (non-finite) updates that count as divergence")
    action: Literal["rollback", "stop"] = Field(
        "rollback", description="rollback: restore the last checkpoint with finite parameters and validation "
        "metrics and scale the learning rate by lr_factor; stop: end the run with a message")
    lr_factor: float = Field(0.5, gt=0, lt=1, description="learning-rate factor applied at each rollback")
    max_rollbacks: int = Field(3, ge=0, description="rollbacks before the run stops instead")


class TrainConfig(_Strict):
    """The loop: how long, how often to evaluate, log and checkpoint."""

    steps: int | None = Field(None, ge=1, description="total optimiser steps (wins over epochs)")
    epochs: float | None = Field(None, gt=0, description="passes over the training split")
    batch_size: int = Field(64, ge=1, description="global batch size (split over devices)")
    eval_batch_size: int = Field(256, ge=1, description="batch size for evaluation")
    eval_every: int = Field(200, ge=1, description="steps between validation passes")
    log_every: int = Field(50, ge=1, description="steps between metric fetches/logs")
    seed: int = Field(0, description="seeds init, shuffling and dropout")
    dropout_masks: Literal["hash", "threefry"] = Field(
        "hash", description="how dropout masks are drawn: a keyed counter hash (fast), or jax.random's threefry, "
        "as every run recorded before December 2026 did (to reproduce those figures; astroflax/models/dropout.py)")
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    nonfinite: NonFiniteConfig = Field(default_factory=NonFiniteConfig, description="divergence policy")
    progress: bool = Field(True, description="show a progress bar on a terminal")
    device_data_max_mb: float = Field(
        256, ge=0, description="a training split of at most this many MB (the arrays the model reads) is held "
        "on the devices whole and each batch gathered inside the step, which saves reading and copying every "
        "batch on the host (one process only); 0 streams every batch")
    param_sharding: Literal["replicated", "fsdp"] = Field(
        "replicated", description="parameters and optimiser state: a full copy on every device, or split "
        "FSDP-style over the data axis so that a state larger than one device fits (docs/distributed.md)")

    @model_validator(mode="after")
    def _one_length(self) -> "TrainConfig":
        if self.steps is None and self.epochs is None:
            raise ValueError("set train.steps or train.epochs")
        return self


class CheckpointConfig(_Strict):
    """Orbax checkpointing and retention."""

    every: int | None = Field(None, ge=1, description="steps between checkpoints; null = train.eval_every")
    keep_latest: int = Field(2, ge=1, description="latest checkpoints kept")
    keep_best: int = Field(1, ge=0, description="best checkpoints kept (by metric)")
    metric: str = Field("val_loss", description="metric ranking the best checkpoints")
    mode: Literal["min", "max"] = "min"
    async_save: bool = Field(True, description="write checkpoints in the background")
    backup_dir: str | None = Field(
        None, description="directory receiving a copy of every backup_every-th committed checkpoint; restore falls "
        "back to it when a step is damaged or missing (one directory per run)")
    backup_every: int = Field(1, ge=1, description="back up every k-th committed checkpoint (with backup_dir)")


class ExperimentConfig(_Strict):
    """Everything that decides a run."""

    task: str
    name: str | None = Field(None, description="run name; default <task>-<preset>")
    run_dir: str | None = Field(None, description="run directory; default runs/<name>")
    preset: str | None = None
    dataset: str | None = Field(None, description="a converted dataset directory (astroflax data convert) to "
                                "stream the data from, instead of the task's own loading")
    stream: bool = Field(True, description="stream the task's data from disk: converted at first use into the "
                         "dataset cache (one data path for bundled and user data); false: hold it in memory")
    study: str | None = Field(None, description="the hyperparameter study this config came from "
                              "(<study directory>#<trial>; set by astroflax tune, shown by the checklist)")
    # The task's own pydantic sections (see finalize_config): typed instances once resolved.
    data: Any = Field(default_factory=dict, description="task data options")
    model: Any = Field(default_factory=dict, description="task model options")
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(steps=1000))
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    @model_validator(mode="after")
    def _checkpoint_with_eval(self) -> "ExperimentConfig":
        # Checkpoints follow evaluations unless set: every preset used to restate this by hand.
        if self.checkpoint.every is None:
            self.checkpoint.every = self.train.eval_every
        return self

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
    if path.is_dir():
        raise ConfigError(f"config file {path}: is a directory; expected a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file {path}: not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path}: not a text file (byte {exc.start} is not UTF-8); "
                          "expected a YAML config") from None
    if "\x00" in text:
        raise ConfigError(f"config file {path}: not a text file (it contains NUL bytes); expected a YAML config")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path}: not valid YAML{where} ({first})") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # e.g. a date such as 2024-13-45
        raise ConfigError(f"config file {path}: a value cannot be read ({type(exc).__name__}: {exc})") from None
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
    file_values: dict | None = None,
) -> ExperimentConfig:
    """Resolve the defaults + the task's preset + YAML file + overrides into a validated config.

    ``base`` (a run's saved config) replaces defaults + preset, so that resuming a run needs
    no flags beyond ``--run-dir``; anything given explicitly is still applied on top of it.
    """
    task = get_task(task_name)
    # ``file_values``: the contents of a config file read earlier (a study keeps them, not the path)
    file_values = load_yaml_file(config_file) if config_file else dict(file_values or {})
    if base is not None:
        if preset and preset != base.get("preset"):
            raise ConfigError(
                f"--preset {preset!r}: this run directory was created with preset {base.get('preset')!r}; "
                "use another --run-dir for a different preset"
            )
        raw = dict(base)
    else:
        raw = {"task": task.name}
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
    if raw.get("dataset") and base is None:
        # A converted dataset fixes the data section: the one it was converted with.
        from astroflax.data.store import read_manifest

        manifest = read_manifest(raw["dataset"])
        if manifest.get("task") != task.name:
            raise ConfigError(f"dataset {raw['dataset']} was converted for task {manifest.get('task')!r}, "
                              f"not {task.name!r}")
        raw["data"] = dict((manifest.get("source") or {}).get("data") or {})
    return finalize_config(raw)


def finalize_config(raw: dict) -> ExperimentConfig:
    """Validate a raw dict (e.g. a saved config.yaml), including the task's own sections."""
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    task = get_task(cfg.task)
    data = validate_section(task.data_config, cfg.data, "data")
    model = validate_section(task.model_config, cfg.model, "model")
    cfg.data = data
    cfg.model = model
    return cfg
