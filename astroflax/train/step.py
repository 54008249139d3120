"""Pure, jitted train and eval steps.

The NNX module is split outside jit and merged inside, so the compiled function sees only
arrays (no Python graph traversal per call). The state and the metric accumulator are donated:
their buffers are reused in place.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from astroflax.config import OptimConfig
from astroflax.models.dropout import MaskGenerator, mask_generator
from astroflax.tasks.base import Batch, LossFn
from astroflax.train.state import TrainState


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    schedule: optax.Schedule,
    optim: OptimConfig | None = None,
    dropout_masks: MaskGenerator = "hash",
) -> Callable[[TrainState, dict, Batch], tuple[TrainState, dict]]:
    """Returns ``step(state, acc, batch) -> (state, acc)``; ``acc`` sums metrics on device.
    ``step.metric_names(state, batch)`` lists the metrics without a second trace of the model.

    ``optim`` switches on the recipes that act on the loss rather than on the gradients:
    compute precision (and float16 loss scaling), L2 / gradient-norm penalties and label
    smoothing (passed to the task as ``batch["_label_smoothing"]``). ``tx`` must come from
    ``build_optimizer`` with the same ``optim``. ``dropout_masks`` is ``train.dropout_masks``.
    """
    from astroflax.train.optim import actual_lr, decay_mask_fn
    from astroflax.train.precision import all_finite, compute_dtype, set_compute_dtype

    reg = optim.regularization if optim is not None else None
    dtype = compute_dtype(optim.precision) if optim is not None else None
    loss_scaling = optim is not None and optim.precision == "float16"
    l2 = reg.l2 if reg else 0.0
    grad_penalty = reg.grad_norm_penalty if reg else 0.0
    smoothing = reg.label_smoothing if reg else 0.0
    l2_mask = decay_mask_fn(optim) if l2 else None

    def core(state: TrainState, batch: Batch) -> tuple[TrainState, dict, jax.Array]:
        # A fresh key per step derived from (seed key, step): identical after a resume.
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

        # The step travels with the batch for losses that change with training (e.g. KL warm-up).
        step_batch = {**batch, "_step": state.step}
        if smoothing:
            step_batch["_label_smoothing"] = float(smoothing)  # a Python float: tasks may branch on it

        def task_loss(params):
            # copy=True: fresh Variables at this trace level, so BatchNorm may update its statistics.
            model = nnx.merge(graphdef, params, state.model_state, copy=True)
            if dtype is not None:
                set_compute_dtype(model, dtype)
            with mask_generator(dropout_masks):
                loss, aux = loss_fn(model, step_batch, rng, True)
            _, _, new_model_state = nnx.split(model, nnx.Param, ...)
            # Batch statistics keep their stored dtype whatever the compute dtype.
            new_model_state = jax.tree.map(lambda n, o: n.astype(o.dtype), new_model_state, state.model_state)
            return loss.astype(jnp.float32), (aux, new_model_state)

        def compute(params):
            extra = {}
            if grad_penalty:
                (loss, inner), g = jax.value_and_grad(task_loss, has_aux=True)(params)
                extra["grad_penalty"] = grad_penalty * jnp.square(optax.global_norm(g))
            else:
                loss, inner = task_loss(params)
            if l2:
                sq = jax.tree.map(lambda p, m: jnp.sum(jnp.square(p)) if m else 0.0, params, l2_mask(params))
                extra["l2_penalty"] = 0.5 * l2 * sum(jax.tree.leaves(sq))
            total = loss + sum(extra.values()) if extra else loss
            scaled = total * state.opt_state.scale if loss_scaling else total
            return scaled, (loss, inner, extra)

        (_, (loss, (aux, model_state), extra)), grads = jax.value_and_grad(compute, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        # lr_scale < 1 only after a rollback (train/loop.py); scaling the update scales the lr.
        # Selected, not multiplied, at 1: XLA fuses a multiply into the parameter update (FMA),
        # which changed the numbers of every run (measured: photoz val_loss after 600 steps).
        scaled = state.lr_scale != 1.0
        updates = jax.tree.map(lambda u: jnp.where(scaled, u * state.lr_scale.astype(u.dtype), u), updates)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.global_norm(grads)
        precision_metrics = {}
        if loss_scaling:
            # The scaler already skipped an overflowing update (zero updates, a lower scale): that
            # is routine in float16. Divergence is a non-finite loss or non-finite parameters.
            grad_norm = grad_norm / state.opt_state.scale
            precision_metrics = {
                "loss_scale": state.opt_state.scale,
                "skipped": jnp.logical_not(all_finite(grads)).astype(jnp.float32),
            }
            accept = all_finite(params)
            diverged = jnp.logical_not(accept & jnp.isfinite(loss))
        else:
            # The non-finite guard: an update from a non-finite loss or gradient, or one that would
            # make a parameter non-finite, is not applied (in every precision, not only float16).
            accept = jnp.isfinite(loss) & all_finite(grads) & all_finite(params)
            diverged = jnp.logical_not(accept)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(accept, n, o), new, old)  # noqa: E731
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            # The lr of this update: the schedule at the optimiser's own count (see optim.actual_lr).
            "lr": actual_lr(state.opt_state, schedule, state.step) * state.lr_scale,
            "nonfinite": diverged.astype(jnp.float32),
            **extra,
            **precision_metrics,
            **aux,
        }
        # Means are over the steps whose update was applied (a skipped step's loss is NaN).
        weight = accept.astype(jnp.float32) if not loss_scaling else jnp.float32(1.0)
        new_state = state.replace(
            step=state.step + 1,
            params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state) if not loss_scaling else opt_state,
            model_state=keep(model_state, state.model_state),
            nonfinite_streak=jnp.where(diverged, state.nonfinite_streak + 1, 0).astype(jnp.int32),
        )
        return new_state, metrics, weight

    # The step proper is a jit of its own inside the jitted step, so that the loop's one look at
    # its metric names (``step.metric_names``, an ``eval_shape``) and the step's compilation share
    # one trace of the model: jit caches a function's trace by its argument types. The loop's start
    # lost 0.35-0.45 s tracing the transients model twice. XLA inlines the nested call: trained
    # parameters after 30-40 steps were bitwise equal to the single jit's (transients, photoz,
    # photoz in float16, morphology).
    core_jit = jax.jit(core)

    def step(state: TrainState, acc: dict, batch: Batch) -> tuple[TrainState, dict]:
        new_state, metrics, weight = core_jit(state, batch)
        acc = {
            k: v.astype(jnp.float32) if k in LAST_VALUE_METRICS
            else acc.get(k, 0.0) + (v.astype(jnp.float32) if k in COUNT_METRICS
                                    else jnp.where(weight > 0, v.astype(jnp.float32), 0.0))
            for k, v in metrics.items()
        } | {"count": acc["count"] + weight}
        return new_state, acc

    def metric_names(state: TrainState, batch: Batch) -> list[str]:
        """The names of the metrics the step accumulates (its accumulator's keys but ``count``)."""
        return sorted(jax.eval_shape(core_jit, state, batch)[1])

    step.metric_names = metric_names  # type: ignore[attr-defined]
    return step


class FlatStep:
    """A train step jitted on the state's flat list of arrays rather than on the TrainState.

    Why: a TrainState holds NNX ``Variable`` nodes, and jit flattens its arguments and rebuilds
    its outputs in Python on every call (219 ``Variable`` rebuilds a step for transients quick);
    a list of arrays is flattened in C++. The photoz quick step (0.65 ms of compute and dispatch
    on one core) went from 0.64 to 0.51 ms. The loop keeps the leaves and rebuilds the TrainState
    only where it is read (logging, evaluation, checkpoints).
    """

    def __init__(self, step: Callable[[TrainState, dict, Batch], tuple[TrainState, dict]], like: TrainState,
                 out_shardings: tuple[Any, Any] | None = None, resident: dict[str, jax.Array] | None = None):
        """``resident``: the training split held on the devices whole; each call then takes the
        batch's example indices (:class:`~astroflax.data.pipeline.IndexStream`) instead of a batch
        and gathers its rows inside the step."""
        self.treedef = jax.tree.structure(like)
        self.resident = resident

        def flat(leaves: list, acc: dict, batch: Batch) -> tuple[list, dict]:
            state, acc = step(jax.tree.unflatten(self.treedef, leaves), acc, batch)
            if jax.tree.structure(state) != self.treedef:
                raise AssertionError(f"the train step changed the state's structure: {jax.tree.structure(state)}")
            return jax.tree.leaves(state), acc

        kwargs = {}
        if out_shardings is not None:
            kwargs["out_shardings"] = (jax.tree.leaves(out_shardings[0]), out_shardings[1])
        if resident is None:
            self._jit = jax.jit(flat, donate_argnums=(0, 1), **kwargs)
        else:
            def gathered(leaves: list, acc: dict, data: dict, indices: jax.Array) -> tuple[list, dict]:
                # The values of a batch gathered on the host; the steps are bitwise the same
                # (photoz runs: tests/test_store.py; transients, 20 steps, checked by hand).
                # Indices are in range by construction, so "clip" (no mask), not take's "fill".
                return flat(leaves, acc, {k: jnp.take(v, indices, axis=0, mode="clip") for k, v in data.items()})

            self._jit = jax.jit(gathered, donate_argnums=(0, 1), **kwargs)

    def flatten(self, state: TrainState) -> list:
        leaves, treedef = jax.tree.flatten(state)
        if treedef != self.treedef:
            raise ValueError(f"a state of another structure: {treedef}")
        return leaves

    def unflatten(self, leaves: list) -> TrainState:
        return jax.tree.unflatten(self.treedef, leaves)

    def __call__(self, leaves: list, acc: dict, batch: Batch | Any) -> tuple[list, dict]:
        """One step on ``batch``, or, with a resident split, on the rows ``batch`` indexes."""
        if self.resident is None:
            return self._jit(leaves, acc, batch)
        return self._jit(leaves, acc, self.resident, batch)


# How the on-device accumulator turns into logged values: most metrics are means over the
# steps since the last log; these are the value at the logged step, or a count of steps.
LAST_VALUE_METRICS = ("lr", "loss_scale")
COUNT_METRICS = ("nonfinite", "skipped")


def summarise_accumulator(host: dict[str, Any]) -> dict[str, float]:
    """Logged values from a fetched accumulator (means, last values and counts; see above).

    Means are NaN (logged as null) when no update of the window was applied."""
    count = float(host["count"])
    return {
        k: float(v) if k in LAST_VALUE_METRICS or k in COUNT_METRICS
        else (float(v) / count if count > 0 else float("nan"))
        for k, v in host.items()
        if k != "count"
    }


def init_accumulator(metric_names: list[str]) -> dict[str, jax.Array]:
    return {name: jnp.zeros((), jnp.float32) for name in [*metric_names, "count"]}


def make_predict_step(
    graphdef: nnx.GraphDef, predict_fn: Callable[[nnx.Module, Batch], jax.Array]
) -> Callable[[Any, Any, Batch], jax.Array]:
    def predict(params, model_state, batch: Batch) -> jax.Array:
        model = nnx.merge(graphdef, params, model_state)
        return predict_fn(model, batch)

    return predict
