"""Build the Optax transformation and learning-rate schedule from the config.

One factory, :func:`build_optimizer`, turns ``optim`` + ``schedule`` into a single
``optax.GradientTransformation``. Every recipe is a config key (docs/optimisation.md). The
default config builds exactly ``chain(clip_by_global_norm, adamw)`` with the same optimiser-state
layout as before, so old checkpoints still restore.

Layering (outermost first): dynamic loss scaling (float16) > EMA/SWA averaging > MultiSteps
(accumulation) > [zero frozen grads, clip by value, clip by global norm, lookahead(
multi_transform(per-group optimiser x lr factor | set_to_zero for frozen), layer-wise decay)].
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from astroflax.config import OptimConfig, ScheduleConfig

# --------------------------------------------------------------------------- paths


def path_str(path: tuple) -> str:
    """``(DictKey('encoder'), DictKey(0), ..., GetAttrKey('value'))`` -> ``'encoder.0...'``."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            if k.name in ("value", "raw_value"):  # nnx.Variable's payload, not part of the name
                continue
            parts.append(k.name)
        else:
            parts.append(str(k))
    return ".".join(parts)


def map_paths(fn: Callable[[str, Any], Any], tree: Any) -> Any:
    """``tree_map`` with the dotted parameter path (optax's MaskedNode subtrees have no leaves)."""
    return jax.tree_util.tree_map_with_path(lambda p, x: fn(path_str(p), x), tree)


def flat_params(tree: Any) -> dict[str, Any]:
    return {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _matches(patterns: list[str], path: str) -> bool:
    return any(re.search(p, path) for p in patterns)


def decays(optim: OptimConfig, path: str, ndim: int) -> bool:
    """Weight-decay rule: ``auto`` skips biases, norm scales and 1-d params (and ``no_decay`` paths)."""
    if _matches(optim.no_decay, path):
        return False
    if optim.decay_mask == "all":
        return True
    leaf = path.rsplit(".", 1)[-1]
    return ndim >= 2 and leaf not in ("bias", "scale")


def decay_mask_fn(optim: OptimConfig) -> Callable[[Any], Any]:
    return lambda tree: map_paths(lambda path, x: decays(optim, path, jnp.ndim(x)), tree)


def is_frozen(optim: OptimConfig, path: str) -> bool:
    if _matches(optim.freeze, path):
        return True
    return optim.train_only is not None and not _matches(optim.train_only, path)


def param_label(optim: OptimConfig, path: str) -> str:
    """multi_transform label: ``frozen``, ``lr_rule<i>`` (first matching multiplier rule) or ``base``."""
    if is_frozen(optim, path):
        return "frozen"
    for i, rule in enumerate(optim.lr_multipliers):
        if re.search(rule.pattern, path):
            return f"lr_rule{i}"
    return "base"


def layer_factors(optim: OptimConfig, paths: list[str]) -> dict[str, float]:
    """LLRD factor per path: layer i of L gets d**(L-i), embed_pattern params d**(L+1), the rest 1."""
    ld = optim.layer_decay
    if ld.factor is None:
        return {p: 1.0 for p in paths}
    index = {}
    for p in paths:
        m = re.search(ld.layer_pattern, p)
        if m:
            index[p] = int(m.group(1))
    num_layers = max(index.values(), default=-1) + 1
    out = {}
    for p in paths:
        if p in index:
            out[p] = ld.factor ** (num_layers - index[p])
        elif ld.embed_pattern and re.search(ld.embed_pattern, p):
            out[p] = ld.factor ** (num_layers + 1)
        else:
            out[p] = 1.0
    return out


# ------------------------------------------------------------------------ schedules


def build_schedule(sched: ScheduleConfig, peak_lr: float, total_steps: int) -> optax.Schedule:
    """A linear warm-up joined (optax.join_schedules) to the named decay; ``constant`` never warms up."""
    if sched.name == "constant":
        return optax.constant_schedule(peak_lr)
    warmup = min(sched.warmup_steps, max(total_steps - 1, 0))
    if sched.name == "warmup_cosine":  # kept exactly as before for existing configs
        if sched.warmup_start_factor == 0.0 and sched.decay_steps is None:
            return optax.warmup_cosine_decay_schedule(
                init_value=0.0,
                peak_value=peak_lr,
                warmup_steps=warmup,
                decay_steps=max(total_steps, warmup + 1),
                end_value=peak_lr * sched.end_factor,
            )
    decay_steps = sched.decay_steps or max(total_steps - warmup, 1)
    end = peak_lr * sched.end_factor
    if sched.name == "linear":
        decay = optax.linear_schedule(peak_lr, end, decay_steps)
    elif sched.name in ("cosine", "warmup_cosine"):
        decay = optax.cosine_decay_schedule(peak_lr, decay_steps, alpha=sched.end_factor)
    elif sched.name == "exponential":
        decay = optax.exponential_decay(
            peak_lr, sched.transition_steps, sched.decay_rate, staircase=sched.staircase,
            end_value=end if end > 0 else None,
        )
    else:  # piecewise: boundaries are absolute steps; the decay part starts counting after warm-up
        scales: dict[int, float] = {}
        for b, s in zip(sched.boundaries, sched.scales):
            key = max(b - warmup, 0)
            scales[key] = scales.get(key, 1.0) * s
        decay = optax.piecewise_constant_schedule(peak_lr, scales)
    if warmup == 0:
        return decay
    ramp = optax.linear_schedule(peak_lr * sched.warmup_start_factor, peak_lr, warmup)
    return optax.join_schedules([ramp, decay], [warmup])


def num_updates(optim: OptimConfig, total_steps: int) -> int:
    """Optimiser updates in ``total_steps`` train steps: schedules count updates, not micro-batches."""
    return -(-int(total_steps) // optim.accumulate_steps)


def lr_curve(optim: OptimConfig, sched: ScheduleConfig, total_steps: int) -> np.ndarray:
    """Base learning rate used at each train step 0..total_steps-1 (accumulation: one lr per k steps)."""
    schedule = build_schedule(sched, optim.lr, num_updates(optim, total_steps))
    steps = np.arange(total_steps) // optim.accumulate_steps
    return np.asarray(jax.vmap(schedule)(jnp.asarray(steps)), np.float64)


# ------------------------------------------------------------------- optimisers


def decoupled_weight_decay(weight_decay: float, mask: Callable[[Any], Any]) -> optax.GradientTransformation:
    """``updates + wd * params`` where ``mask`` is True. Stateless with ``EmptyState``, like
    ``optax.add_decayed_weights`` without a mask, so adamw's state layout does not change."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        m = mask(params)
        updates = jax.tree.map(lambda u, p, keep: u + weight_decay * p if keep else u, updates, params, m)
        return updates, state

    return optax.GradientTransformation(init, update)


def _optimizer(optim: OptimConfig, lr: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    mask = decay_mask_fn(optim)
    wd = optim.weight_decay
    if optim.name == "adamw":
        # optax.adamw's own chain, with a decay that honours the mask without changing the state layout.
        return optax.chain(
            optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps),
            decoupled_weight_decay(wd, mask),
            optax.scale_by_learning_rate(lr),
        )
    if optim.name == "adam":
        return optax.adam(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps)
    if optim.name == "sgd":
        return optax.sgd(lr, momentum=optim.momentum, nesterov=optim.nesterov)
    if optim.name == "rmsprop":
        return optax.rmsprop(lr, decay=optim.rms_decay, eps=optim.eps, centered=optim.centered,
                             momentum=optim.momentum or None, nesterov=optim.nesterov)
    if optim.name == "lamb":
        return optax.lamb(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=wd, mask=mask)
    if optim.name == "lion":
        return optax.lion(lr, b1=optim.b1, b2=optim.b2, weight_decay=wd, mask=mask)
    if optim.name == "adafactor":
        return optax.adafactor(lr, weight_decay_rate=wd or None, weight_decay_mask=mask)
    raise AssertionError(optim.name)  # the config's Literal rules this out


def scale_by_path(factors: Callable[[list[str]], dict[str, float]]) -> optax.GradientTransformation:
    """Multiply each update by a per-parameter factor chosen from its path (stateless)."""

    def update(updates, state, params=None):
        del params
        table = factors(list(flat_params(updates)))
        return map_paths(lambda p, u: u * jnp.asarray(table[p], u.dtype), updates), state

    return optax.GradientTransformation(lambda p: optax.EmptyState(), update)


class LookaheadWrapState(NamedTuple):
    lookahead: Any  # optax.LookaheadState (fast optimiser state, steps since sync)
    slow: Any  # slow weights


def lookahead(inner: optax.GradientTransformation, sync_period: int, slow_step_size: float) -> optax.GradientTransformation:
    """optax.lookahead on plain params: it needs ``LookaheadParams(fast, slow)``, so the slow
    weights live in this optimiser state and the train state keeps ordinary (fast) params."""
    la = optax.lookahead(inner, sync_period, slow_step_size)

    def init(params):
        # The slow weights get their own buffers: the train state (params included) is donated.
        return LookaheadWrapState(la.init(optax.LookaheadParams.init_synced(params)), jax.tree.map(jnp.array, params))

    def update(grads, state, params=None):
        both = optax.LookaheadParams(fast=params, slow=state.slow)
        updates, la_state = la.update(grads, state.lookahead, both)
        slow = optax.apply_updates(state.slow, updates.slow)
        return updates.fast, LookaheadWrapState(la_state, slow)

    return optax.GradientTransformation(init, update)


def _core(optim: OptimConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
    per_param = bool(optim.lr_multipliers or optim.freeze or optim.train_only is not None)
    if not per_param:
        core = _optimizer(optim, schedule)
    else:
        transforms = {"base": _optimizer(optim, schedule), "frozen": optax.set_to_zero()}
        for i, rule in enumerate(optim.lr_multipliers):
            transforms[f"lr_rule{i}"] = optax.chain(_optimizer(optim, schedule), optax.scale(rule.factor))
        core = optax.multi_transform(transforms, lambda tree: map_paths(lambda p, x: param_label(optim, p), tree))
    if optim.layer_decay.factor is not None:
        core = optax.chain(core, scale_by_path(lambda paths: layer_factors(optim, paths)))
    if optim.lookahead.enabled:
        core = lookahead(core, optim.lookahead.sync_period, optim.lookahead.slow_step_size)
    return core


def build_optimizer(
    optim: OptimConfig, sched: ScheduleConfig, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW + global-norm clipping + warm-up cosine unless the config says otherwise."""
    from astroflax.train import averaging, precision

    # With accumulation the schedule's clock is the optimiser's update count (see actual_lr),
    # so its horizon is the number of updates, not of micro-batches.
    schedule = build_schedule(sched, optim.lr, num_updates(optim, total_steps))
    parts: list[optax.GradientTransformation] = []
    if optim.freeze or optim.train_only is not None:
        # Frozen grads are zeroed first so that they do not count in the clipping norm.
        frozen = lambda tree: map_paths(lambda p, x: is_frozen(optim, p), tree)  # noqa: E731
        parts.append(optax.masked(optax.set_to_zero(), frozen))
    if optim.clip_value:
        parts.append(optax.clip(optim.clip_value))
    if optim.clip_norm:
        parts.append(optax.clip_by_global_norm(optim.clip_norm))
    tx = optax.chain(*parts, _core(optim, schedule))
    applied = None
    if optim.accumulate_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=optim.accumulate_steps).gradient_transformation()
        applied = lambda s: s.mini_step == 0  # noqa: E731  (an update was applied by this call)
    if optim.ema.decay is not None or optim.swa.start_step is not None:
        tx = averaging.with_averaging(tx, optim.ema, optim.swa, applied)
    if optim.precision == "float16":
        tx = precision.dynamic_loss_scale(tx, optim.loss_scale)
    return tx, schedule


# ----------------------------------------------------------------------- the actual lr


def schedule_count(opt_state: Any) -> jax.Array | None:
    """The step count the schedule sees (from the first ScaleByScheduleState), None if absent."""
    is_sched = lambda x: isinstance(x, optax.ScaleByScheduleState)  # noqa: E731
    for leaf in jax.tree.leaves(opt_state, is_leaf=is_sched):
        if is_sched(leaf):
            return leaf.count
    return None


def actual_lr(opt_state: Any, schedule: optax.Schedule, step: jax.Array) -> jax.Array:
    """Base learning rate of the update made at this step: the schedule at the optimiser's own count,
    which lags the train step under accumulation (one update per k steps) and skipped f16 steps."""
    count = schedule_count(opt_state)
    return jnp.asarray(schedule(step if count is None else count), jnp.float32)
