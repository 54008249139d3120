"""astroflax's jitted train step against a PyTorch CPU twin of the same model, side by side.

What it measures: for each model, training throughput (samples/s) of

- astroflax: the real step, built as ``benchmarks/train_step.py`` builds it (``build_config`` ->
  ``build_components`` -> ``make_train_step``, ``jax.jit`` with donation), cycling a pool of real
  batches of the task's training split (drawn through ``TrainStream``, put on the device once);
- torch: an eager (no ``torch.compile``) PyTorch module with the same architecture and the
  same number of trainable parameters (asserted), the same batch size, inputs (a pool of real
  batches drawn by the astroflax worker), loss, dropout and augmentation, AdamW with the same
  lr / betas / eps / weight decay (none on biases, norm scales and 1-d parameters, like
  ``optim.decay_mask: auto``), the same global-norm clipping and the same warm-up + cosine
  schedule (``LambdaLR``).

Models: ``transients-quick`` (induced attention), ``transients-full`` (full attention, L=192,
observation dropout, flux jitter), ``morphology`` (the quick preset's CNN; torch both NCHW and
``channels_last``), ``photoz`` (the quick preset's MLP with a mixture head).

Each framework runs in its own long-lived worker process (this file with ``--worker``), driven
over stdin/stdout JSON lines. After warm-up (compilation), the parent runs R interleaved rounds
of N steps per worker, alternating which goes first, so slow drifts of a shared machine hit both
alike. Per round and worker: wall time and the deltas of ``getrusage(RUSAGE_SELF)`` (minor and
major page faults, user and system CPU time); at the end each worker's peak RSS, of the whole
process (set-up and compilation included: the astroflax worker loads the whole training split)
and of the timed steps alone (the kernel's peak mark is reset after set-up and warm-up).

``--cores 1`` (default) pins every worker to one core (``--core``) with one compute thread per
framework; ``--cores 2`` gives both cores and default threading.

    pip install -e '.[bench]'
    python benchmarks/vs_torch.py --cores 1
    python benchmarks/vs_torch.py --models transients-quick,photoz --rounds 5 --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, TextIO

# name -> (task, preset, torch variants, default steps per round). Steps per round are sized for
# ~2-5 s per round (both frameworks) on one core of a 2-core machine.
MODELS: dict[str, tuple[str, str, list[str], int]] = {
    "transients-quick": ("transients", "quick", ["torch"], 6),
    "transients-full": ("transients", "full", ["torch"], 2),
    "morphology": ("morphology", "quick", ["torch", "torch-channels_last"], 15),
    "photoz": ("photoz", "quick", ["torch"], 250),
}
# The config the astroflax worker builds (as benchmarks/train_step.py does; stream=false only
# skips writing the data to the dataset cache: the arrays, hence the batches, are the same).
OVERRIDES = ["train.seed=0", "train.steps=10000", "stream=false"]
POOL_BATCHES = 8  # real batches handed to the torch worker (cycled)


def worker_env(framework: str, cores: int = 1, allocator: str = "astroflax") -> dict[str, str]:
    """The environment of a worker process (the one place for allocator or threading settings).

    ``allocator="astroflax"`` gives the jax worker the environment the ``astroflax`` program runs
    under (:mod:`astroflax.launch`); ``"default"`` leaves glibc's defaults (for the ablation).
    The torch worker always runs as a torch user's would.
    """
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if framework == "jax":
        env.setdefault("JAX_PLATFORMS", "cpu")
        if allocator == "astroflax":
            from astroflax.launch import allocator_env

            env = allocator_env(env) or env
        if cores == 1:  # one XLA:CPU compute thread; read when the backend starts, so set before importing jax
            flags = "--xla_cpu_multi_thread_eigen=false"
            env["XLA_FLAGS"] = f"{env['XLA_FLAGS']} {flags}" if env.get("XLA_FLAGS") else flags
    return env


# ============================================================================ workers


def _usage() -> dict[str, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"minflt": r.ru_minflt, "majflt": r.ru_majflt, "utime": r.ru_utime, "stime": r.ru_stime}


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float | None:
    """VmHWM: the peak RSS since the process started or since :func:`_reset_peak_rss`."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def serve(proto: TextIO, setup: Callable[[dict], dict], run: Callable[[int], None],
          mean_loss: Callable[[], float]) -> None:
    """Answer the parent's commands (one JSON object per line) until ``finish``.

    Two peaks of RSS are reported: of the whole process (``maxrss_mb``: the astroflax worker
    loads the task's whole training split to draw the batches, the torch worker only the pool),
    and of the timed steps alone (``step_rss_mb``: the mark is reset once set-up and warm-up are
    done and the set-up's garbage collected), which is the bare step's: framework, model,
    optimiser state, the pool of batches and the step's working memory."""
    reset, setup_peak = False, 0.0
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "setup":
            reply = setup(msg)
            gc.collect()
            setup_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the reset clears this too
            reset = _reset_peak_rss()
        elif msg["cmd"] == "run":
            before, t = _usage(), time.perf_counter()
            run(msg["steps"])
            wall = time.perf_counter() - t
            after = _usage()
            reply = {"steps": msg["steps"], "wall": wall, **{k: after[k] - before[k] for k in before}}
        elif msg["cmd"] == "finish":
            reply = {"maxrss_mb": max(setup_peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                     "mean_loss": mean_loss(),
                     "step_rss_mb": _peak_rss_mb() if reset else None}
        else:
            raise ValueError(f"unknown command {msg['cmd']!r}")
        proto.write(json.dumps(reply) + "\n")
        proto.flush()
        if msg["cmd"] == "finish":
            return


def jax_worker(model: str, proto: TextIO) -> None:
    import jax
    import numpy as np

    from astroflax.config import build_config
    from astroflax.data.pipeline import TrainStream
    from astroflax.runtime import release_free_memory
    from astroflax.train.components import build_components
    from astroflax.train.sharding import replicate, shard_batch
    from astroflax.train.step import FlatStep, init_accumulator, make_train_step

    task, preset, _, _ = MODELS[model]
    live: dict[str, Any] = {}

    def setup(msg: dict) -> dict:
        cfg = build_config(task, preset, overrides=OVERRIDES)
        check_mirrored(cfg)
        c = build_components(cfg)
        arrays = c.task.device_arrays(c.dataset.split("train"))
        mesh, state = c.mesh, c.state
        step = make_train_step(c.graphdef, c.tx, c.loss_fn, c.schedule, cfg.optim, cfg.train.dropout_masks)  # as the training loop does
        stream = TrainStream(arrays, cfg.train.batch_size, 0, c.dataset.version)
        example = shard_batch(next(stream), mesh)
        acc = jax.eval_shape(step, state, init_accumulator([]), example)[1]
        acc = replicate(init_accumulator([k for k in acc if k != "count"]), mesh)
        jstep = FlatStep(step, state)  # as the training loop does: the state as a flat list of arrays
        pool = [next(stream) for _ in range(POOL_BATCHES)]
        # The same pool of batches as the torch worker, already on the device: the step against
        # the step. (Reading each batch through TrainStream on the one pinned core as well cost
        # 5.8 ms of photoz's 8.2 ms a step here: that is the loop's overhead, not the step's.)
        live.update(state=jstep.flatten(state), acc=acc, jstep=jstep, batches=[shard_batch(b, mesh) for b in pool], i=0)
        run(msg["warmup"])  # compile + warm up
        release_free_memory()  # as the training loop does after its first step
        np.savez(msg["pool"], **{f"{i}/{k}": v for i, b in enumerate(pool) for k, v in b.items()})
        sched = cfg.schedule
        warmup = min(sched.warmup_steps, max(c.total_steps - 1, 0))
        info_keys = ("num_classes", "meta_dim", "input_mean", "input_std", "target_mean", "target_std", "channels")
        return {
            "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
            "batch_size": cfg.train.batch_size,
            "shapes": {k: [list(v.shape), str(v.dtype)] for k, v in pool[0].items()},
            "model": cfg.model.model_dump(mode="json"),
            "data": cfg.data.model_dump(mode="json"),
            "info": {k: c.info[k] for k in info_keys if k in c.info},
            "optim": {k: getattr(cfg.optim, k) for k in ("lr", "weight_decay", "b1", "b2", "eps", "clip_norm")},
            "schedule": {"warmup": warmup, "decay": sched.decay_steps or max(c.total_steps - warmup, 1),
                         "start_factor": sched.warmup_start_factor, "end_factor": sched.end_factor},
            "devices": len(jax.devices()),
        }

    def run(n: int) -> None:
        state, acc, jstep, batches, i = (live[k] for k in ("state", "acc", "jstep", "batches", "i"))
        for k in range(i, i + n):
            state, acc = jstep(state, acc, batches[k % len(batches)])
        jax.block_until_ready(acc)
        live.update(state=state, acc=acc, i=i + n)

    serve(proto, setup, run, lambda: float(live["acc"]["loss"] / live["acc"]["count"]))


def check_mirrored(cfg: Any) -> None:
    """The torch twin mirrors AdamW + global-norm clipping + warm-up cosine in float32 and nothing more."""
    o, s = cfg.optim, cfg.schedule
    unmirrored = {
        "optim.name": o.name != "adamw", "optim.clip_value": o.clip_value is not None,
        "optim.accumulate_steps": o.accumulate_steps != 1, "optim.lookahead": o.lookahead.enabled,
        "optim.lr_multipliers": bool(o.lr_multipliers), "optim.layer_decay": o.layer_decay.factor is not None,
        "optim.freeze": bool(o.freeze or o.train_only is not None), "optim.ema": o.ema.decay is not None,
        "optim.swa": o.swa.start_step is not None, "optim.precision": o.precision != "float32",
        "optim.decay_mask": o.decay_mask != "auto" or bool(o.no_decay),
        "optim.regularization": bool(o.regularization.l2 or o.regularization.grad_norm_penalty
                                     or o.regularization.label_smoothing),
        "schedule.name": s.name != "warmup_cosine",
    }
    bad = [k for k, v in unmirrored.items() if v]
    if bad:
        raise SystemExit(f"the torch twin does not mirror {', '.join(bad)} of this config")


# ------------------------------------------------------------------ the torch twins


def torch_worker(model: str, channels_last: bool, cores: int, proto: TextIO) -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(cores)
    if cores == 1:
        torch.set_num_interop_threads(1)

    def gelu(x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")  # jax.nn.gelu's default is the tanh approximation

    def ln(d: int) -> nn.LayerNorm:
        return nn.LayerNorm(d, eps=1e-6)  # flax's epsilon

    def mha(d: int, heads: int) -> nn.MultiheadAttention:
        return nn.MultiheadAttention(d, heads, batch_first=True)  # q, k, v, out projections with biases, as flax

    def weighted_ce(logits: torch.Tensor, b: dict) -> torch.Tensor:
        per = F.cross_entropy(logits, b["label"], reduction="none")
        w = b.get("sample_weight")
        w = torch.ones_like(per) if w is None else w
        with torch.no_grad():  # astroflax's loss also returns the accuracy
            b["_accuracy"] = (logits.argmax(-1) == b["label"]).float().mean()
        return (per * w).sum() / w.sum().clamp_min(1e-9)

    # ---- transients: astroflax.models.lightcurve.TransientClassifier
    class FullLayer(nn.Module):
        def __init__(self, d: int, heads: int, ratio: int, p: float):
            super().__init__()
            self.ln_attn, self.attn, self.ln_mlp = ln(d), mha(d, heads), ln(d)
            self.fc1, self.fc2, self.drop = nn.Linear(d, d * ratio), nn.Linear(d * ratio, d), nn.Dropout(p)

        def forward(self, x: torch.Tensor, mask: torch.Tensor, kpm: torch.Tensor) -> torch.Tensor:
            q = self.ln_attn(x)
            x = x + self.drop(self.attn(q, q, q, key_padding_mask=kpm, need_weights=False)[0])
            x = x + self.drop(self.fc2(gelu(self.fc1(self.ln_mlp(x)))))
            return x.masked_fill(~mask[..., None], 0.0)

    class InducedLayer(nn.Module):
        def __init__(self, d: int, heads: int, ratio: int, p: float, num_inducing: int):
            super().__init__()
            self.inducing = nn.Parameter(0.02 * torch.randn(num_inducing, d))
            self.ln_ind, self.ln_x, self.attn_in, self.ln_lat = ln(d), ln(d), mha(d, heads), ln(d)
            self.attn_out, self.ln_mlp = mha(d, heads), ln(d)
            self.fc1, self.fc2, self.drop = nn.Linear(d, d * ratio), nn.Linear(d * ratio, d), nn.Dropout(p)

        def forward(self, x: torch.Tensor, mask: torch.Tensor, kpm: torch.Tensor) -> torch.Tensor:
            ind = self.inducing.expand(x.shape[0], -1, -1)
            xn = self.ln_x(x)
            q = self.ln_ind(ind)
            lat = ind + self.attn_in(q, xn, xn, key_padding_mask=kpm, need_weights=False)[0]
            kv = self.ln_lat(lat)
            x = x + self.drop(self.attn_out(xn, kv, kv, need_weights=False)[0])
            x = x + self.drop(self.fc2(gelu(self.fc1(self.ln_mlp(x)))))
            return x.masked_fill(~mask[..., None], 0.0)

    class LightCurveClassifier(nn.Module):
        def __init__(self, m: dict, num_classes: int, meta_dim: int, num_bands: int = 6):
            super().__init__()
            d, p = m["d_model"], m["dropout"]
            self.m, self.num_bands = m, num_bands
            self.value_proj = nn.Linear(2, d)
            self.band_embed = nn.Embedding(num_bands, d)
            periods = np.geomspace(m["min_period"], m["max_period"], m["num_frequencies"])
            self.register_buffer("omega", torch.tensor(2 * np.pi / periods, dtype=torch.float32))
            self.time_proj = nn.Linear(2 * m["num_frequencies"], d)
            self.drop = nn.Dropout(p)
            if m["attention"] == "full":
                make = lambda: FullLayer(d, m["num_heads"], m["mlp_ratio"], p)  # noqa: E731
            else:
                make = lambda: InducedLayer(d, m["num_heads"], m["mlp_ratio"], p, m["num_inducing"])  # noqa: E731
            self.layers = nn.ModuleList([make() for _ in range(m["num_layers"])])
            self.ln_pool, self.pool_score, self.ln_out = ln(d), nn.Linear(d, 1), ln(d)
            self.head_fc, self.head_out = nn.Linear(d + meta_dim, d), nn.Linear(d, num_classes)

        def forward(self, b: dict) -> torch.Tensor:
            mask = b["mask"]
            flux, ferr = b["flux"], b["flux_err"]
            if self.training and self.m["obs_dropout"]:  # astroflax's training augmentation
                kept = mask & (torch.rand(mask.shape) >= self.m["obs_dropout"])
                mask_new = torch.where(kept.any(-1, keepdim=True), kept, mask)
            else:
                mask_new = mask
            if self.training and self.m["flux_jitter"]:
                err = ferr.masked_fill(~mask, 0.0)
                flux = (flux + self.m["flux_jitter"] * err * torch.randn(mask.shape)).masked_fill(~mask, 0.0)
            mask = mask_new
            # padded inputs zeroed before any arithmetic
            time_ = b["time"].masked_fill(~mask, 0.0)
            vals = torch.stack([flux.masked_fill(~mask, 0.0), ferr.masked_fill(~mask, 0.0)], -1)
            band = b["band"].clamp(0, self.num_bands - 1).masked_fill(~mask, 0)
            ang = time_[..., None] * self.omega
            x = self.value_proj(vals) + self.band_embed(band) + self.time_proj(torch.cat([ang.sin(), ang.cos()], -1))
            x = self.drop(x).masked_fill(~mask[..., None], 0.0)
            # key-padding mask as flax builds it: masked logits get finfo.min (finite), not -inf
            kpm = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
            for layer in self.layers:
                x = layer(x, mask, kpm)
            score = self.pool_score(self.ln_pool(x))[..., 0].masked_fill(~mask, torch.finfo(torch.float32).min)
            w = torch.softmax(score, -1) * mask  # a fully padded row gets all-zero weights
            z = self.ln_out(torch.einsum("bl,bld->bd", w, x))
            if b["meta"].shape[1]:
                z = torch.cat([z, b["meta"]], -1)
            return self.head_out(self.drop(gelu(self.head_fc(z))))

    # ---- morphology: astroflax.models.cnn.SmallCNN + augment_images (NCHW tensors)
    class SmallCNN(nn.Module):
        def __init__(self, in_channels: int, num_classes: int, m: dict, memory_format: torch.memory_format):
            super().__init__()
            self.f, self.blocks, self.memory_format = m["space_to_depth"], m["blocks"], memory_format
            self.num_stages = len(m["widths"])
            convs, norms, c_in = [], [], in_channels * self.f**2
            for w in m["widths"]:
                for _ in range(m["blocks"]):
                    convs.append(nn.Conv2d(c_in, w, 3, padding=1, bias=False))
                    norms.append(nn.BatchNorm2d(w, eps=1e-5, momentum=1 - m["bn_momentum"]))  # torch's is 1 - flax's
                    c_in = w
            self.convs, self.norms = nn.ModuleList(convs), nn.ModuleList(norms)
            self.drop, self.head = nn.Dropout(m["dropout"]), nn.Linear(c_in, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.f > 1:  # lossless space-to-depth (channel order (c, fi, fj) where astroflax has (fi, fj, c))
                x = F.pixel_unshuffle(x, self.f)
            x = x.contiguous(memory_format=self.memory_format)
            i = 0
            for stage in range(self.num_stages):
                for _ in range(self.blocks):
                    x = F.relu(self.norms[i](self.convs[i](x)))
                    i += 1
                if stage < self.num_stages - 1:
                    x = F.max_pool2d(x, 2)
            return self.head(self.drop(x.mean((2, 3))))

    def augment_images(x: torch.Tensor, m: dict) -> torch.Tensor:
        """astroflax.models.cnn.augment_images, same algorithm, on (B, C, S, S)."""
        x = x.float()
        b, c = x.shape[:2]
        if m["colour_jitter"] > 0:
            x = x * torch.exp(m["colour_jitter"] * torch.randn(b, c, 1, 1))
        if m["desaturate"] > 0:
            on = torch.rand(b, 1, 1, 1) < m["desaturate"]
            t = torch.where(on, torch.rand(b, 1, 1, 1), 0.0)
            x = (1 - t) * x + t * x.mean(1, keepdim=True)
        if m["augment"]:  # random 90-degree rotation, then a random flip
            k = torch.randint(0, 4, (b,))
            rots = torch.stack([torch.rot90(x, r, dims=(2, 3)) for r in range(4)], 1)
            out = rots[torch.arange(b), k]
            x = torch.where((torch.rand(b) < 0.5)[:, None, None, None], out.flip(3), out)
        if m["rotate_degrees"] > 0:
            raise SystemExit("the torch twin does not mirror model.rotate_degrees")
        return x

    # ---- photoz: astroflax.models.mlp.MLPRegressor (mixture head) + the task's forward
    class MixtureRegressor(nn.Module):
        def __init__(self, m: dict, info: dict):
            super().__init__()
            sizes = [len(info["input_mean"]), *m["hidden"]]
            self.layers = nn.ModuleList([nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])])
            self.norms = nn.ModuleList([nn.LayerNorm(b, eps=1e-6) for b in sizes[1:]]) if m["layer_norm"] else None
            self.act = {"gelu": gelu, "relu": F.relu, "silu": F.silu, "tanh": torch.tanh}[m["activation"]]
            self.p = m["dropout"]
            k = m["num_components"] if m["head"] == "mixture" else 1
            if m["head"] == "mixture":
                self.logits, self.means, self.sigmas = (nn.Linear(sizes[-1], k) for _ in range(3))
                self.mean_offset = nn.Parameter(torch.linspace(-1.5, 1.5, k) if k > 1 else torch.zeros(1))
            else:
                raise SystemExit("the torch twin mirrors the mixture head only")
            self.register_buffer("in_mean", torch.tensor(info["input_mean"], dtype=torch.float32))
            self.register_buffer("in_std", torch.tensor(info["input_std"], dtype=torch.float32))
            self.t_mean, self.t_std = float(info["target_mean"]), float(info["target_std"])

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            x = (x - self.in_mean) / self.in_std
            for i, layer in enumerate(self.layers):
                x = layer(x)
                if self.norms is not None:
                    x = self.norms[i](x)
                x = self.act(x)
                if self.p > 0:  # astroflax skips dropout at rate 0
                    x = F.dropout(x, self.p, self.training)
            means = self.means(x) + self.mean_offset
            log_sigmas = torch.log(1e-3 + F.softplus(self.sigmas(x)))
            return self.logits(x), self.t_mean + self.t_std * means, log_sigmas + math.log(self.t_std)

    def mixture_loss(out: tuple, b: dict) -> torch.Tensor:
        logits, means, log_sigmas = out
        y = b["z"]
        u = (y[:, None] - means) * torch.exp(-log_sigmas)
        nll = -torch.logsumexp(F.log_softmax(logits, -1) - 0.5 * u**2 - log_sigmas - 0.5 * math.log(2 * math.pi), -1)
        with torch.no_grad():  # astroflax's loss also returns nll and abs_err of the mixture mean
            b["_abs_err"] = ((torch.softmax(logits, -1) * means).sum(-1) - y).abs().mean()
        return nll.mean()

    # ---- build the twin from the astroflax worker's spec
    live: dict[str, Any] = {}

    def setup(msg: dict) -> dict:
        spec = msg["spec"]
        m, info, d = spec["model"], spec["info"], spec["data"]
        task = MODELS[model][0]
        torch.manual_seed(0)
        raw = np.load(spec["pool"])
        pool: list[dict[str, torch.Tensor]] = []
        for i in range(POOL_BATCHES):
            b = {k.split("/", 1)[1]: torch.from_numpy(raw[k]) for k in raw.files if k.startswith(f"{i}/")}
            if "label" in b:  # torch's cross-entropy wants int64 classes
                b["label"] = b["label"].long()
            if "mask" in b:
                b["mask"] = b["mask"].bool()
            if "image" in b:  # NHWC -> NCHW: the permuted view is already channels_last in memory
                b["image"] = b["image"].permute(0, 3, 1, 2)
                b["image"] = b["image"] if channels_last else b["image"].contiguous()
            pool.append(b)

        if task == "transients":
            net: nn.Module = LightCurveClassifier(m, info["num_classes"], info["meta_dim"])
            loss_fn = lambda b: weighted_ce(net(b), b)  # noqa: E731
        elif task == "morphology":
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            net = SmallCNN(info.get("channels", 3), info["num_classes"], m, fmt).to(memory_format=fmt)
            loss_fn = lambda b: weighted_ce(net(augment_images(b["image"], m)), b)  # noqa: E731
        else:
            net = MixtureRegressor(m, info)

            def loss_fn(b: dict) -> torch.Tensor:
                mag, err = b["mag"], b["mag_err"]
                if d["noise_augment"]:
                    mag = mag + torch.clamp(err, max=d["max_noise_err"]) * torch.randn(mag.shape)
                x = torch.cat([mag, mag[:, :-1] - mag[:, 1:]], -1)  # magnitudes and adjacent colours
                return mixture_loss(net(x), b)
        net.train()

        params = [p for p in net.parameters() if p.requires_grad]
        o, s = spec["optim"], spec["schedule"]
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": o["weight_decay"]},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=o["lr"], betas=(o["b1"], o["b2"]), eps=o["eps"])

        def lr_factor(step: int) -> float:  # optax warmup_cosine_decay_schedule / peak
            if step < s["warmup"]:
                return s["start_factor"] + (1 - s["start_factor"]) * step / s["warmup"]
            t = min(step - s["warmup"], s["decay"])
            return s["end_factor"] + (1 - s["end_factor"]) * 0.5 * (1 + math.cos(math.pi * t / s["decay"]))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
        live.update(net=net, params=params, opt=opt, sched=sched, loss_fn=loss_fn, pool=pool, i=0,
                    clip=o["clip_norm"], loss_sum=torch.zeros(()))
        run(msg["warmup"])
        return {"params": int(sum(p.numel() for p in params)), "threads": torch.get_num_threads(),
                "version": torch.__version__}

    def run(n: int) -> None:
        opt, sched, pool = live["opt"], live["sched"], live["pool"]
        for _ in range(n):
            b = dict(pool[live["i"] % len(pool)])
            live["i"] += 1
            opt.zero_grad(set_to_none=True)
            loss = live["loss_fn"](b)
            loss.backward()
            if live["clip"]:
                torch.nn.utils.clip_grad_norm_(live["params"], live["clip"])
            opt.step()
            sched.step()
            live["loss_sum"] += loss.detach()  # metrics stay on the tensor side, as astroflax's accumulator

    serve(proto, setup, run, lambda: float(live["loss_sum"]) / live["i"])


def worker_main(framework: str, model: str, args: argparse.Namespace) -> None:
    # Pin before importing jax / torch, so that their thread pools see the affinity.
    os.sched_setaffinity(0, {args.core} if args.cores == 1 else set(range(os.cpu_count() or 1)))
    proto = os.fdopen(os.dup(1), "w")  # the protocol channel; anything printed goes to stderr
    os.dup2(2, 1)
    if framework == "jax":
        jax_worker(model, proto)
    else:
        torch_worker(model, args.channels_last, args.cores, proto)


# ============================================================================ parent


class Worker:
    def __init__(self, name: str, framework: str, model: str, args: argparse.Namespace, channels_last: bool = False):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework, model,
               "--cores", str(args.cores), "--core", str(args.core)] + (["--channels-last"] if channels_last else [])
        self.name = name
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=worker_env(framework, args.cores, args.allocator))
        self.rounds: list[dict] = []

    def ask(self, **msg: Any) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name} worker died (exit code {self.proc.wait()}); see its stderr above")
        return json.loads(line)

    def close(self) -> dict:
        out = self.ask(cmd="finish")
        self.proc.wait(timeout=60)
        return out


def bench_model(model: str, args: argparse.Namespace, tmp: str) -> dict:
    task, preset, variants, default_steps = MODELS[model]
    steps = args.steps or default_steps
    workers: list[Worker] = []
    try:
        jx = Worker("astroflax", "jax", model, args)
        workers.append(jx)
        t = time.perf_counter()
        spec = jx.ask(cmd="setup", warmup=args.warmup, pool=os.path.join(tmp, f"{model}.npz"))
        print(f"{model}: astroflax worker ready in {time.perf_counter() - t:.0f} s (data, compile, warm-up)", flush=True)
        spec["pool"] = os.path.join(tmp, f"{model}.npz")
        for v in variants:
            w = Worker(v, "torch", model, args, channels_last=v.endswith("channels_last"))
            workers.append(w)
            setup = w.ask(cmd="setup", spec=spec, warmup=args.warmup)
            print(f"{model}: trainable parameters astroflax {spec['params']:,}, {v} {setup['params']:,} "
                  f"(torch {setup['version']}, {setup['threads']} threads)", flush=True)
            assert setup["params"] == spec["params"], f"{model}: parameter counts differ"
        for r in range(args.rounds):
            for w in workers if r % 2 == 0 else workers[::-1]:  # alternate which goes first
                w.rounds.append(w.ask(cmd="run", steps=steps))
        final = {w.name: w.close() for w in workers}
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()
    bs = spec["batch_size"]
    rss = {name: f["maxrss_mb"] for name, f in final.items()}
    step_rss = {name: f.get("step_rss_mb") for name, f in final.items()}
    summary = {}
    for w in workers:
        tot = {k: sum(r[k] for r in w.rounds) for k in ("steps", "wall", "minflt", "majflt", "utime", "stime")}
        cpu = tot["utime"] + tot["stime"]
        summary[w.name] = {
            "samples_per_s": statistics.median(r["steps"] * bs / r["wall"] for r in w.rounds),
            "ms_per_step": 1e3 * statistics.median(r["wall"] / r["steps"] for r in w.rounds),
            "minflt_per_step": tot["minflt"] / tot["steps"],
            "majflt_per_step": tot["majflt"] / tot["steps"],
            "sys_fraction": tot["stime"] / cpu if cpu else 0.0,
            "cpu_per_wall": cpu / tot["wall"],
            "peak_rss_mb": rss[w.name],
            "step_rss_mb": step_rss[w.name],
            "mean_train_loss": final[w.name]["mean_loss"],  # a sanity check (warm-up included), not a comparison
        }
    ratios = {}
    for w in workers[1:]:
        per = [a["steps"] / a["wall"] / (b["steps"] / b["wall"]) for a, b in zip(jx.rounds, w.rounds)]
        ratios[w.name] = {"median": statistics.median(per), "min": min(per), "max": max(per), "per_round": per,
                          "rss": rss["astroflax"] / rss[w.name],
                          "step_rss": (step_rss["astroflax"] / step_rss[w.name]
                                       if step_rss["astroflax"] and step_rss[w.name] else None)}
    return {"task": task, "preset": preset, "params": spec["params"], "batch_size": bs, "steps_per_round": steps,
            "rounds": {w.name: w.rounds for w in workers}, "summary": summary, "ratios": ratios}


def print_table(model: str, res: dict, args: argparse.Namespace) -> None:
    print(f"\n{model} ({res['task']} preset {res['preset']}): {res['params']:,} trainable parameters each, "
          f"batch {res['batch_size']}, {args.rounds} rounds x {res['steps_per_round']} steps, --cores {args.cores}")
    print(f"  {'':22s} {'samples/s':>10s} {'ms/step':>8s} {'minflt/step':>12s} {'majflt/step':>12s} "
          f"{'sys/CPU':>8s} {'CPU/wall':>9s} {'peak RSS MB':>12s} {'step RSS MB':>12s}")
    for name, s in res["summary"].items():
        print(f"  {name:22s} {s['samples_per_s']:10.0f} {s['ms_per_step']:8.2f} {s['minflt_per_step']:12.1f} "
              f"{s['majflt_per_step']:12.2f} {100 * s['sys_fraction']:7.1f}% {s['cpu_per_wall']:9.2f} "
              f"{s['peak_rss_mb']:12.0f} {s['step_rss_mb'] or float('nan'):12.0f}")
    print("  mean training loss (sanity check, warm-up included): "
          + ", ".join(f"{n} {s['mean_train_loss']:.3f}" for n, s in res["summary"].items()))
    for name, r in res["ratios"].items():
        print(f"  astroflax/{name}: throughput {r['median']:.2f} (rounds {r['min']:.2f}-{r['max']:.2f}), "
              f"peak RSS {r['rss']:.2f}, step RSS {r['step_rss'] or float('nan'):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--steps", type=int, default=0, help="steps per worker per round (0 = the model's default)")
    ap.add_argument("--warmup", type=int, default=3, help="steps before timing (astroflax: includes the compile)")
    ap.add_argument("--cores", type=int, choices=(1, 2), default=1, help="1: pinned, one thread; 2: both cores")
    ap.add_argument("--core", type=int, default=0, help="the core that --cores 1 pins every worker to")
    ap.add_argument("--allocator", choices=("astroflax", "default"), default="astroflax",
                    help="the jax worker's allocator settings: astroflax's (as the CLI runs) or glibc's defaults")
    ap.add_argument("--json", help="write the results (with every round) to this file")
    ap.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "MODEL"), help=argparse.SUPPRESS)
    ap.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker_main(*args.worker, args)
        return
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            results[model] = bench_model(model, args, tmp)
            print_table(model, results[model], args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "models": results}, f, indent=1)


if __name__ == "__main__":
    main()
