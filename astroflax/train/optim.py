"""Build the Optax transformation and learning-rate schedule from the config."""

from __future__ import annotations

import optax

from astroflax.config import OptimConfig, ScheduleConfig


def build_schedule(sched: ScheduleConfig, peak_lr: float, total_steps: int) -> optax.Schedule:
    if sched.name == "constant":
        return optax.constant_schedule(peak_lr)
    warmup = min(sched.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak_lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=peak_lr * sched.end_factor,
    )


def build_optimizer(
    optim: OptimConfig, sched: ScheduleConfig, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW + global-norm clipping + warm-up cosine unless the config says otherwise."""
    schedule = build_schedule(sched, optim.lr, total_steps)
    if optim.name == "adamw":
        core = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay)
    elif optim.name == "adam":
        core = optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps)
    else:
        core = optax.sgd(schedule, momentum=optim.momentum)
    parts = [optax.clip_by_global_norm(optim.clip_norm)] if optim.clip_norm else []
    return optax.chain(*parts, core), schedule
