"""The task registry: each task module registers itself here, in one place."""

from __future__ import annotations

from astroflax.errors import ConfigError
from astroflax.tasks.base import Dataset, Task

_REGISTRY: dict[str, Task] = {}
_BUILTINS_LOADED = False


def register(task: Task) -> Task:
    if task.name in _REGISTRY:
        raise ValueError(f"task {task.name!r} registered twice")
    _REGISTRY[task.name] = task
    return task


def _load_builtin() -> None:
    # Imported lazily so that `astroflax --help` stays fast.
    global _BUILTINS_LOADED
    _BUILTINS_LOADED = True
    from astroflax.tasks import transients  # noqa: F401
    from astroflax.tasks import variables  # noqa: F401
    from astroflax.tasks import morphology  # noqa: F401
    from astroflax.tasks import photoz  # noqa: F401
    from astroflax.tasks import vae  # noqa: F401
    from astroflax.tasks import spectra  # noqa: F401


def all_tasks() -> dict[str, Task]:
    # A flag, not "is the registry empty": importing one task module directly (as a
    # test or a user script may) registers that task alone and must not hide the rest.
    if not _BUILTINS_LOADED:
        _load_builtin()
    return dict(sorted(_REGISTRY.items()))


def get_task(name: str) -> Task:
    tasks = all_tasks()
    if name not in tasks:
        raise ConfigError(f"unknown task {name!r}; available: {', '.join(tasks)}")
    return tasks[name]


__all__ = ["Dataset", "Task", "all_tasks", "get_task", "register"]
