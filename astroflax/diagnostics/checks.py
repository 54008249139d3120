"""Pre-training diagnostics: catch a broken model, loss or dataset before spending hours on it.

Every check returns a :class:`CheckResult` (a status plus the table that justifies it), so the
CLI can print it and tests can assert on its numbers. Checks work on any registered task:
they only use the Task contract (``load_data``, ``build_model``, ``loss_fn``).

Statuses: ``pass``; ``warn`` (worth a look, does not fail ``astroflax check``); ``fail``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from astroflax.tasks.base import Dataset, Task
from astroflax.train.optim import path_str

EXPLODING_NORM = 100.0
VANISHING_NORM = 1e-7
GRADCHECK_TOL = 1e-4
# Below this size a gradient is compared in absolute terms (|ad - fd| <= tol * floor): central
# differences in float64 carry ~1e-10 of rounding error, which is no signal on a ~0 gradient.
GRADCHECK_FLOOR = 1e-4
LARGE_VALUE = 1e6


@dataclasses.dataclass
class CheckResult:
    """One diagnostic: ``status`` in pass / warn / fail, a one-line ``summary`` and a table."""

    name: str
    status: str
    summary: str
    columns: list[str] = dataclasses.field(default_factory=list)
    rows: list[list[Any]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    value: Any = None

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON form (non-finite numbers become None)."""
        return _finite_or_none(dataclasses.asdict(self))


def _finite_or_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _worst(statuses: list[str]) -> str:
    for s in ("fail", "warn"):
        if s in statuses:
            return s
    return "pass"


def _key(path: tuple) -> str:
    """A parameter's dotted path, as ``--freeze``, ``optim.no_decay`` etc. match it
    (``encoder.layers.0.attn.qkv.kernel``): the keys of :func:`astroflax.train.optim.flat_params`."""
    return path_str(path)


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)


# ----------------------------------------------------------------------- model summary


def model_summary(params: Any, model_state: Any = None) -> CheckResult:
    """Every parameter array with shape, dtype and size; fails if any starts non-finite."""
    rows, total, bad = [], 0, []
    for tree, kind in ((params, "param"), (model_state, "state")):
        if tree is None:
            continue
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            arr = np.asarray(leaf)
            total += arr.size if kind == "param" else 0
            finite = bool(np.all(np.isfinite(arr))) if np.issubdtype(arr.dtype, np.floating) else True
            if not finite:
                bad.append(_key(path))
            rows.append([_key(path), kind, str(tuple(arr.shape)), str(arr.dtype), f"{arr.size:,}"])
    rows.append(["total (trainable)", "", "", "", f"{total:,}"])
    status = "fail" if bad else "pass"
    summary = f"{total:,} trainable parameters in {sum(r[1] == 'param' for r in rows)} arrays"
    notes = [f"non-finite values at initialisation in {bad}"] if bad else []
    return CheckResult("model summary", status, summary, ["path", "kind", "shape", "dtype", "count"], rows, notes, total)


# ------------------------------------------------------------------------ gradient check


def _reference_attention(query, key, value, bias=None, mask=None, *, dropout_rng=None, dropout_rate=0.0,
                         broadcast_dropout=True, deterministic=True, dtype=None, precision=None, module=None,
                         is_causal=False, **_):
    """Flax's reference attention (softmax in the input dtype), for the float64 gradient check."""
    from flax.nnx.nn.attention import dot_product_attention_weights

    weights = dot_product_attention_weights(
        query, key, bias, mask, broadcast_dropout, dropout_rng, dropout_rate, deterministic, dtype, precision,
        None, is_causal=is_causal,
    )
    return jnp.einsum("...hqk,...khd->...qhd", weights, value, precision=precision)


def _float64_graphdef(graphdef: nnx.GraphDef, params: Any, model_state: Any) -> nnx.GraphDef:
    """The same model with every Flax layer computing in float64.

    Flax layers store a computation ``dtype`` (``Embed`` defaults to the parameter dtype,
    float32) and cast to it, and ``jax.nn.dot_product_attention`` (Flax's default attention
    path) always runs its softmax in float32; left alone, both would put float32 rounding into
    the finite differences. Attention layers using Flax's default function get the reference
    implementation instead; custom attention functions are left as they are.
    """
    from flax.nnx.nn.attention import dot_product_attention

    model = nnx.merge(graphdef, params, model_state)
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Module):
            if getattr(node, "attention_fn", None) is dot_product_attention:
                node.attention_fn = _reference_attention
            for attr in ("dtype", "param_dtype"):
                value = getattr(node, attr, None)
                if value is not None and jnp.issubdtype(value, jnp.floating) and jnp.dtype(value).itemsize < 8:
                    setattr(node, attr, jnp.float64)
    return nnx.split(model, nnx.Param, ...)[0]


def _count_downcasts(jaxpr) -> int:
    """``convert_element_type`` from float64 to a narrower float, in ``jaxpr`` and its sub-jaxprs."""
    n = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "convert_element_type":
            src, dst = eqn.invars[0].aval.dtype, eqn.params.get("new_dtype")
            if src == jnp.float64 and dst is not None and jnp.issubdtype(dst, jnp.floating):
                n += jnp.dtype(dst).itemsize < 8
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    n += _count_downcasts(inner)
    return n


def gradient_check(
    graphdef: nnx.GraphDef,
    params: Any,
    model_state: Any,
    loss_fn,
    batch: dict[str, np.ndarray],
    *,
    num: int = 16,
    eps: float = 1e-6,
    tol: float = GRADCHECK_TOL,
    seed: int = 0,
) -> CheckResult:
    """Autodiff against central finite differences in float64 on ``num`` random parameters.

    The loss runs with ``train=False`` (no dropout) inside a local ``jax.enable_x64`` context,
    with the parameters and model state in float64 and Flax layers computing in float64, so a
    mismatch means a wrong gradient, not rounding noise. If the model itself casts activations
    to float32, float64 differences are impossible: the check then warns instead of failing.
    """
    rng = np.random.default_rng(seed)
    with jax.enable_x64(True):
        to64 = lambda x: jnp.asarray(x, jnp.float64) if _is_float(x) else jnp.asarray(x)  # noqa: E731
        graphdef = _float64_graphdef(graphdef, params, model_state)
        p64 = jax.tree.map(to64, params)
        s64 = jax.tree.map(to64, model_state)
        # Inputs stay as they are (float32 data is exact in float64 arithmetic); only what is
        # differentiated, the parameters, and the model state move to float64.
        b64 = {k: jnp.asarray(v) for k, v in batch.items()}
        key = jax.random.key(seed)

        def loss64(p):
            loss, _ = loss_fn(nnx.merge(graphdef, p, s64), b64, key, False)
            return loss.astype(jnp.float64)

        downcasts = _count_downcasts(jax.make_jaxpr(loss64)(p64).jaxpr)
        f = jax.jit(loss64)

        grads = jax.jit(jax.grad(f))(p64)
        leaves, treedef = jax.tree_util.tree_flatten_with_path(p64)
        gleaves = jax.tree.leaves(grads)
        candidates = [i for i, (_, x) in enumerate(leaves) if _is_float(x) and x.size]
        chosen = rng.choice(candidates, size=min(num, len(candidates)), replace=False)
        if num > len(candidates):  # more samples than arrays: extra elements from random arrays
            chosen = np.concatenate([chosen, rng.choice(candidates, size=num - len(candidates))])
        values = [x for _, x in leaves]
        rows, worst = [], 0.0
        for i in chosen:
            leaf = values[i]
            flat_idx = int(rng.integers(leaf.size))
            idx = np.unravel_index(flat_idx, leaf.shape)
            losses = []
            for sign in (1.0, -1.0):
                moved = list(values)
                moved[i] = leaf.at[idx].add(sign * eps)
                losses.append(float(f(jax.tree_util.tree_unflatten(treedef, moved))))
            fd = (losses[0] - losses[1]) / (2 * eps)
            ad = float(np.asarray(gleaves[i])[idx])
            rel = abs(ad - fd) / max(abs(ad), abs(fd), GRADCHECK_FLOOR)
            worst = max(worst, rel if math.isfinite(rel) else math.inf)
            rows.append([_key(leaves[i][0]), str(tuple(int(j) for j in idx)), f"{ad:.6e}", f"{fd:.6e}", f"{rel:.2e}"])
    summary = f"max relative error {worst:.2e} over {len(rows)} parameters (threshold {tol:g}, float64, eps {eps:g})"
    if worst <= tol:
        status, notes = "pass", []
    elif downcasts:
        # float32 rounding inside the loss makes float64 finite differences meaningless: say so.
        status = "warn"
        summary += f"; the loss casts float64 values to lower precision {downcasts} time(s)"
        notes = [
            "the model casts activations to float32 (e.g. `.astype(jnp.float32)`), so the finite differences carry "
            "float32 rounding and cannot verify the gradient to the threshold; not a gradient bug by itself"
        ]
    else:
        status = "fail"
        notes = [
            "autodiff disagrees with finite differences: look for stop_gradient, custom_vjp, integer casts or "
            "non-differentiable ops (argmax, rounding, where on the parameters) in the loss path"
        ]
    return CheckResult(
        "gradient check", status, summary, ["parameter", "index", "autodiff", "finite diff", "rel. error"], rows, notes, worst
    )


# ----------------------------------------------------------------------- gradient health


def gradient_health(
    graphdef: nnx.GraphDef,
    params: Any,
    model_state: Any,
    loss_fn,
    batch: dict[str, np.ndarray],
    rng: jax.Array,
) -> CheckResult:
    """Gradient norm per layer (parameters grouped by their module) in training mode.

    NaN/Inf or a norm above 100 fails; below 1e-7 warns (a zero-initialised layer can
    legitimately block gradients at step 0, a dead branch cannot).
    """

    batch = {**batch, "_step": jnp.zeros((), jnp.int32)}  # training-mode losses may read the step

    @jax.jit
    def grads_of(p):
        def f(p):
            loss, _ = loss_fn(nnx.merge(graphdef, p, model_state, copy=True), batch, rng, True)
            return loss

        return jax.value_and_grad(f)(p)

    loss, grads = grads_of(params)
    groups: dict[str, list[np.ndarray]] = {}
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        key = _key(path)
        module = key.rsplit(".", 1)[0] if "." in key else key
        groups.setdefault(module, []).append(np.asarray(g, np.float64))
    rows, statuses = [], []
    for module, gs in groups.items():
        finite = all(np.all(np.isfinite(g)) for g in gs)
        norm = float(np.sqrt(sum(np.sum(np.square(g)) for g in gs))) if finite else float("nan")
        if not finite:
            status, why = "fail", "NaN/Inf"
        elif norm > EXPLODING_NORM:
            status, why = "fail", f"exploding (> {EXPLODING_NORM:g})"
        elif norm < VANISHING_NORM:
            status, why = "warn", f"vanishing (< {VANISHING_NORM:g})"
        else:
            status, why = "pass", ""
        statuses.append(status)
        rows.append([module, str(sum(g.size for g in gs)), f"{norm:.3e}", status, why])
    status = _worst(statuses)
    flagged = [r[0] for r in rows if r[3] != "pass"]
    summary = f"{len(rows)} layers, loss {float(loss):.4f}; " + (
        f"{len(flagged)} flagged: {', '.join(flagged[:4])}{'...' if len(flagged) > 4 else ''}" if flagged else "all healthy"
    )
    if not np.isfinite(float(loss)):
        status = "fail"
    return CheckResult(
        "gradient health", status, summary, ["layer", "params", "grad norm", "status", "problem"], rows, [], float(loss)
    )


# ---------------------------------------------------------------------- overfit one batch


def _target(initial: float, factor: float) -> float:
    """The loss to reach: ``initial / factor`` for a positive loss, i.e. a drop of (1 - 1/factor) |initial|."""
    return initial - (1.0 - 1.0 / factor) * abs(initial)


def overfit_one_batch(
    graphdef: nnx.GraphDef,
    params: Any,
    model_state: Any,
    loss_fn,
    batch: dict[str, np.ndarray],
    tx: optax.GradientTransformation,
    *,
    steps: int = 200,
    factor: float = 10.0,
    chunk: int = 20,
    lr_text: str = "",
) -> CheckResult:
    """Train on one small batch (``train=False``: no dropout); the loss must fall ``factor``-fold.

    A model that cannot memorise 16 examples will not learn thousands: this catches label or
    masking bugs, a broken loss, a far-off learning rate or a model too small for the task.
    """
    key = jax.random.key(0)

    def loss_of(p):
        loss, _ = loss_fn(nnx.merge(graphdef, p, model_state), batch, key, False)
        return loss

    @jax.jit
    def run(p, opt_state):
        def body(carry, _):
            p, o = carry
            loss, g = jax.value_and_grad(loss_of)(p)
            updates, o = tx.update(g, o, p)
            return (optax.apply_updates(p, updates), o), loss

        (p, opt_state), losses = jax.lax.scan(body, (p, opt_state), None, length=chunk)
        return p, opt_state, losses

    chunk = -(-steps // -(-steps // chunk))  # equal chunks covering ``steps`` (overshoot < one chunk)
    p, opt_state = params, tx.init(params)
    history: list[float] = []
    reached = None
    while len(history) < steps:
        p, opt_state, losses = run(p, opt_state)
        history.extend(float(x) for x in np.asarray(losses))
        initial = history[0]
        target = _target(initial, factor)
        hits = [i for i, v in enumerate(history) if math.isfinite(v) and v <= target]
        if hits:
            reached = hits[0]
            break
        if not all(math.isfinite(v) for v in history):
            break
    history.append(float(jax.jit(loss_of)(p)))  # the loss after the last update
    initial = history[0]
    finite = [v for v in history if math.isfinite(v)]
    best = min(finite) if finite else float("nan")
    # "fall 10x": initial / best for positive losses; for losses that can go negative (Gaussian
    # NLL), the drop relative to |initial|, which is the same criterion when the loss is positive.
    drop = (initial - best) / abs(initial) if finite and initial != 0 else float("nan")
    ratio = float("nan") if not math.isfinite(drop) else (1.0 / (1.0 - drop) if drop < 1 else math.inf)
    fell = f"{ratio:.1f}x" if initial > 0 else f"a drop of {drop:.0%} of |initial|"
    ok = math.isfinite(initial) and (reached is not None or history[-1] <= _target(initial, factor))
    done = len(history) - 1
    checkpoints = sorted({int(i) for i in np.linspace(0, done, min(done + 1, 9))})
    rows = [[str(i), f"{history[i]:.4g}" if math.isfinite(history[i]) else str(history[i])] for i in checkpoints]
    if ok:
        summary = f"loss {initial:.4g} -> {best:.4g} ({fell}) in {reached if reached is not None else done} steps"
        notes: list[str] = []
    else:
        diverged = not all(math.isfinite(v) for v in history) or history[-1] > initial
        summary = (
            f"loss {initial:.4g} -> best {best:.4g} ({fell}; needed {factor:g}x, i.e. a drop of "
            f"{1 - 1 / factor:.0%} of |initial|) in {done} steps"
            + (" — diverged" if diverged else "")
        )
        notes = [
            "likely causes: "
            + ("learning rate too high" + (f" ({lr_text})" if lr_text else "") + "; " if diverged else "")
            + ("learning rate too low" + (f" ({lr_text})" if lr_text else "") + "; " if not diverged else "")
            + "a bug in the labels or the masking (targets not matching inputs, padding counted); "
            "too much regularisation (weight decay, label smoothing, KL weight); "
            "a model too small for the task; try more --overfit-steps"
        ]
    return CheckResult(
        "overfit one batch", "pass" if ok else "fail", summary, ["step", "loss"], rows, notes,
        {"initial": initial, "best": best, "ratio": ratio, "steps": done},
    )


# ---------------------------------------------------------------------------- data checks


def _valid_mask(arrays: dict[str, np.ndarray], arr: np.ndarray) -> np.ndarray | None:
    """The ``mask`` array (True = real entry) broadcast to ``arr``, if it applies to it."""
    mask = arrays.get("mask")
    if mask is None or arr.ndim < mask.ndim or arr.shape[: mask.ndim] != mask.shape:
        return None
    return np.broadcast_to(mask.astype(bool).reshape(mask.shape + (1,) * (arr.ndim - mask.ndim)), arr.shape)


def class_balance(dataset: Dataset) -> CheckResult | None:
    info = dataset.info
    k = info.get("num_classes")
    names = info.get("class_names")
    if not k or not all("label" in s and np.issubdtype(s["label"].dtype, np.integer) for s in dataset.splits.values()):
        return None
    names = list(names) if names else [str(i) for i in range(k)]
    splits = list(dataset.splits)
    counts = {s: np.bincount(np.clip(a["label"], 0, k - 1), minlength=k) for s, a in dataset.splits.items()}
    out_of_range = {s: int(np.sum((a["label"] < 0) | (a["label"] >= k))) for s, a in dataset.splits.items()}
    rows = []
    for c in range(k):
        rows.append([names[c], *[f"{counts[s][c]} ({counts[s][c] / max(counts[s].sum(), 1):.1%})" for s in splits]])
    notes, status = [], "pass"
    if any(out_of_range.values()):
        status = "fail"
        notes.append(f"labels outside [0, {k}): {out_of_range}")
    missing = [names[c] for c in range(k) if counts.get("train", np.ones(k))[c] == 0 and any(counts[s][c] for s in splits)]
    if missing:
        status = "fail" if status == "fail" else "warn"
        notes.append(f"classes absent from train but present elsewhere: {missing}")
    train = counts.get("train", next(iter(counts.values())))
    present = train[train > 0]
    ratio = float(present.max() / present.min()) if len(present) else float("nan")
    summary = f"{k} classes; largest/smallest train class {ratio:.1f}x"
    return CheckResult("class balance", status, summary, ["class", *splits], rows, notes, ratio)


def finite_values(dataset: Dataset) -> CheckResult:
    """NaN/Inf per float array and split (entries outside ``mask`` are padding and not counted)."""
    rows, bad = [], 0
    for split, arrays in dataset.splits.items():
        for name, arr in arrays.items():
            if not np.issubdtype(arr.dtype, np.floating):
                continue
            valid = _valid_mask(arrays, arr)
            nonfinite = ~np.isfinite(arr)
            n_bad = int(np.sum(nonfinite & valid)) if valid is not None else int(np.sum(nonfinite))
            bad += n_bad
            rows.append([split, name, str(n_bad), "mask" if valid is not None else "all"])
    status = "fail" if bad else "pass"
    return CheckResult("NaN / Inf", status, f"{bad} non-finite values", ["split", "array", "non-finite", "counted over"], rows, [], bad)


def value_ranges(dataset: Dataset) -> CheckResult:
    """Min / max / mean / std per numeric array and split; warns on magnitudes above 1e6."""
    rows, large = [], []
    for split, arrays in dataset.splits.items():
        for name, arr in arrays.items():
            if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or arr.size == 0:
                continue
            valid = _valid_mask(arrays, arr) if name != "mask" else None
            x = arr[valid] if valid is not None else arr.ravel()
            x = x.astype(np.float64)
            x = x[np.isfinite(x)]
            if x.size == 0:
                rows.append([split, name, str(arr.dtype), str(tuple(arr.shape)), "-", "-", "-", "-"])
                continue
            lo, hi, mu, sd = float(x.min()), float(x.max()), float(x.mean()), float(x.std())
            if np.issubdtype(arr.dtype, np.floating) and max(abs(lo), abs(hi)) > LARGE_VALUE:
                large.append(f"{split}/{name}")
            rows.append([split, name, str(arr.dtype), str(tuple(arr.shape)), f"{lo:.4g}", f"{hi:.4g}", f"{mu:.4g}", f"{sd:.4g}"])
    status = "warn" if large else "pass"
    notes = [f"values above {LARGE_VALUE:g} in magnitude (normalise them?): {large}"] if large else []
    summary = f"{len(rows)} arrays" + (f"; {len(large)} with large values" if large else "")
    return CheckResult("value ranges", status, summary, ["split", "array", "dtype", "shape", "min", "max", "mean", "std"], rows, notes)


def _row_hashes(arrays: dict[str, np.ndarray], skip: tuple[str, ...]) -> np.ndarray:
    names = sorted(k for k in arrays if k not in skip and not k.startswith("_"))
    n = len(arrays[names[0]]) if names else 0
    flat = [np.ascontiguousarray(arrays[k]).reshape(n, -1).view(np.uint8).reshape(n, -1) for k in names]
    rows = np.concatenate(flat, axis=1) if flat else np.zeros((n, 0), np.uint8)
    return np.array([hashlib.blake2b(r.tobytes(), digest_size=16).hexdigest() for r in rows])


def duplicates_across_splits(dataset: Dataset, task: Task | None = None) -> CheckResult:
    """Objects in more than one split: identical input rows (hashed), and shared ``object_id`` values.

    Identical rows in two splits fail (the test set leaks into training). An ``object_id`` shared
    by rows whose contents differ only warns: ids numbered per split, or a re-observed object.
    """
    splits = list(dataset.splits)
    skip = tuple(task.host_keys if task else ("object_id",)) + ("sample_weight",)
    hashes = {s: _row_hashes(a, skip) for s, a in dataset.splits.items()}
    with_ids = all("object_id" in a for a in dataset.splits.values())
    ids = {s: np.asarray(a["object_id"]) for s, a in dataset.splits.items()} if with_ids else {}
    rows, same_rows, same_ids = [], 0, 0
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            n_rows = int(np.intersect1d(hashes[a], hashes[b]).size)
            n_ids = int(np.intersect1d(ids[a], ids[b]).size) if with_ids else 0
            same_rows += n_rows
            same_ids += n_ids
            rows.append([f"{a} ∩ {b}", str(n_rows), str(n_ids) if with_ids else "-"])
    notes = []
    within = {s: int(len(h) - np.unique(h).size) for s, h in hashes.items()}
    if any(within.values()):
        notes.append(f"identical rows repeated within a split (not an error by itself): {within}")
    if same_ids and not same_rows:
        notes.append(f"{same_ids} object_id values appear in two splits with different contents: "
                     "ids numbered per split, or the same object observed twice (then keep it in one split)")
    status = "fail" if same_rows else ("warn" if same_ids else "pass")
    summary = f"{same_rows} identical rows across splits" + (f", {same_ids} shared object_id values" if with_ids else "")
    return CheckResult("duplicates across splits", status, summary, ["splits", "identical rows", "shared object_id"],
                       rows, notes, same_rows)


def data_checks(dataset: Dataset, task: Task | None = None) -> list[CheckResult]:
    out = [c for c in (class_balance(dataset),) if c is not None]
    return out + [finite_values(dataset), value_ranges(dataset), duplicates_across_splits(dataset, task)]


# ---------------------------------------------------------------------------- all together


def small_batch(arrays: dict[str, np.ndarray], task: Task, size: int, seed: int) -> dict[str, np.ndarray]:
    """``size`` random training examples (device arrays only), the same for a given seed."""
    device = task.device_arrays(arrays)
    n = len(next(iter(device.values())))
    idx = np.sort(np.random.default_rng(seed).permutation(n)[: min(size, n)])
    return {k: np.asarray(v[idx]) for k, v in device.items()}


def run_diagnostics(
    cfg,
    *,
    batch_size: int = 16,
    overfit_steps: int = 200,
    grad_samples: int = 16,
    seed: int = 0,
) -> list[CheckResult]:
    """All pre-training checks for a resolved config, on a freshly initialised model."""
    from astroflax.config import ScheduleConfig
    from astroflax.runtime import enable_compile_cache
    from astroflax.train.components import build_components
    from astroflax.train.optim import build_optimizer

    enable_compile_cache()
    c = build_components(cfg)
    task, dataset, loss_fn = c.task, c.dataset, c.loss_fn
    graphdef, params, model_state = c.graphdef, c.state.params, c.state.model_state
    batch = small_batch(dataset.split("train"), task, batch_size, seed)
    rng = jax.random.key(cfg.train.seed)
    # The overfit loop takes one plain float32 step per batch: no loss scaling, no accumulation.
    optim = cfg.optim.model_copy(update={"precision": "float32", "accumulate_steps": 1})
    tx, _ = build_optimizer(optim, ScheduleConfig(name="constant", warmup_steps=0), overfit_steps)
    results = [model_summary(params, model_state)]
    results.append(gradient_check(graphdef, params, model_state, loss_fn, batch, num=grad_samples, seed=seed))
    results.append(gradient_health(graphdef, params, model_state, loss_fn, batch, rng))
    results.append(
        overfit_one_batch(
            graphdef, params, model_state, loss_fn, batch, tx, steps=overfit_steps,
            lr_text=f"optim.name={cfg.optim.name}, optim.lr={cfg.optim.lr:g}, constant",
        )
    )
    results.extend(data_checks(dataset, task))
    return results
