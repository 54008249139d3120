"""What a command does before its first step (issue 15's start-up): each test runs a fresh
interpreter, since imports and JAX's caches are per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(code: str, tmp_path: Path, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line last."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_tensorboard_scalars_are_written_without_importing_torch(tmp_path):
    """tensorboardX imports torch, when installed, only for a type in its annotations (0.9 s of
    start-up). A stand-in ``torch`` on the path records whether anything imported it."""
    fake = tmp_path / "site" / "torch"
    fake.mkdir(parents=True)
    marker = tmp_path / "torch-was-imported"
    (fake / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\nTensor = object\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    code = (
        "import json, os\n"
        "from pathlib import Path\n"
        "from astroflax.train.metrics_log import MetricsWriter\n"
        f"w = MetricsWriter(Path({str(run_dir)!r}))\n"
        "w.write(3, 'train', {'loss': 0.5}); w.close()\n"
        f"before = os.path.exists({str(marker)!r})\n"
        "import torch  # a later import still finds the installed package\n"
        "print(json.dumps({'before': before, 'torch_file': torch.__file__}))\n"
    )
    out = _run(code, tmp_path, PYTHONPATH=f"{tmp_path / 'site'}{os.pathsep}{REPO}")
    assert out["before"] is False and out["torch_file"].startswith(str(fake)), out
    events = list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_a_command_naming_one_builtin_task_imports_only_its_module(tmp_path):
    code = (
        "import json, sys\n"
        "from astroflax.tasks import all_tasks, get_task\n"
        "task = get_task('photoz')\n"
        "loaded = sorted(m.split('.')[-1] for m in sys.modules if m.startswith('astroflax.tasks.')\n"
        "                and m.split('.')[-1] in ('digits', 'morphology', 'photoz', 'spectra', 'transients', 'vae', 'variables'))\n"
        "print(json.dumps({'name': task.name, 'loaded': loaded, 'all': sorted(all_tasks())}))\n"
    )
    out = _run(code, tmp_path)
    assert out["name"] == "photoz" and out["loaded"] == ["photoz"], out
    assert {"digits", "morphology", "photoz", "spectra", "transients", "vae", "variables"} <= set(out["all"])


def test_quick_executables_are_kept_in_the_persistent_cache(tmp_path):
    """A model's initialisation is dozens of small eager ops; each one's executable is cached
    however quickly it compiled, so a second run loads them instead of compiling them."""
    code = (
        "import json\n"
        "from astroflax.runtime import enable_compile_cache\n"
        "path = enable_compile_cache()\n"
        "import jax.numpy as jnp\n"
        "(jnp.arange(7.0) * 3.0).block_until_ready()\n"
        "print(json.dumps({'files': sorted(p.name for p in path.iterdir())}))\n"
    )
    out = _run(code, tmp_path, ASTROFLAX_CACHE_DIR=str(tmp_path / "cache"))
    assert any(name.startswith("jit_multiply-") for name in out["files"]), out


def test_memory_malloc_holds_free_goes_back_to_the_system(tmp_path):
    """``release_free_memory`` (called once the train step has compiled): free heap memory in the
    middle of the heap, which glibc keeps, is returned. The process allocates 400 MB in 64 KB
    blocks (from the heap, not mmap), keeps one small block above them, and frees the rest."""
    code = (
        "import json, platform\n"
        "from astroflax.runtime import release_free_memory\n"
        "def rss():\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS')) / 1024\n"
        "blocks = [bytearray(64 * 1024) for _ in range(6400)]\n"
        "for b in blocks: b[::4096] = b'x' * len(b[::4096])\n"
        "pin = bytearray(1000)\n"
        "full = rss(); del blocks; freed = rss()\n"
        "released = release_free_memory()\n"
        "print(json.dumps({'libc': platform.libc_ver()[0], 'released': released, 'full': full, 'freed': freed, 'after': rss()}))\n"
    )
    out = _run(code, tmp_path)
    if out["libc"] != "glibc":
        assert out["released"] is False
        return
    assert out["released"] is True
    assert out["freed"] > out["full"] - 100, out  # glibc kept the freed blocks ...
    assert out["after"] < out["freed"] - 300, out  # ... until they were handed back


def test_the_loop_traces_the_model_once_before_its_first_step():
    """The metric names (an ``eval_shape``) and the jitted step share one trace of the loss."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from astroflax.train.state import create_state
    from astroflax.train.step import FlatStep, init_accumulator, make_train_step

    traces = []

    def loss_fn(model, batch, rng, train):
        traces.append(1)
        err = model(batch["x"]) - batch["y"]
        return jnp.mean(err**2), {"mae": jnp.mean(jnp.abs(err))}

    graphdef, state = create_state(nnx.Linear(3, 1, rngs=nnx.Rngs(0)), optax.adam(1e-2), 0)
    batch = {"x": jnp.ones((8, 3)), "y": jnp.zeros((8, 1))}
    step = make_train_step(graphdef, optax.adam(1e-2), loss_fn, optax.constant_schedule(1e-2))
    names = step.metric_names(state, batch)
    assert {"loss", "mae", "grad_norm", "lr", "nonfinite"} <= set(names), names
    flat = FlatStep(step, state)
    leaves, acc = flat(flat.flatten(state), init_accumulator(names), batch)
    assert set(acc) == {*names, "count"} and float(acc["count"]) == 1.0
    jax.block_until_ready(leaves)
    assert len(traces) == 1, len(traces)
