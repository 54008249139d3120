"""The task registry: tasks are discovered, not listed.

Built-in tasks are the modules of this package that define a module-level ``TASK``; tasks
from other distributions register a :class:`Task` (or a module defining ``TASK``) under the
entry-point group ``astroflax.tasks`` in their ``pyproject.toml``::

    [project.entry-points."astroflax.tasks"]
    cepheids = "my_package.cepheids:TASK"

Discovery runs once, lazily, so that ``astroflax --help`` stays fast; a command that names one
built-in task imports only that task's module.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import types
from importlib import metadata

from astroflax.errors import ConfigError
from astroflax.tasks.base import Dataset, Task

ENTRY_POINT_GROUP = "astroflax.tasks"
_REGISTRY: dict[str, Task] = {}
_DISCOVERED = False


def register(task: Task) -> Task:
    """Add ``task`` (idempotent for the same object; a different task under a taken name is an error)."""
    if not isinstance(task, Task):
        raise TypeError(f"expected an astroflax Task, got {type(task).__name__}")
    known = _REGISTRY.get(task.name)
    if known is not None and known is not task:
        raise ConfigError(f"task {task.name!r} is defined twice ({_origin(known)} and {_origin(task)})")
    _REGISTRY[task.name] = task
    return task


def _origin(task: Task) -> str:
    return getattr(task.load_data, "__module__", "?")


def _task_of(obj: object, where: str) -> Task:
    if isinstance(obj, types.ModuleType):
        obj = getattr(obj, "TASK", None)
    if not isinstance(obj, Task):
        raise ConfigError(f"{where}: expected an astroflax Task (or a module defining TASK)")
    return obj


def _discover() -> None:
    global _DISCOVERED
    for mod in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{mod.name}")
        if isinstance(getattr(module, "TASK", None), Task):
            register(module.TASK)
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plug-in names itself instead of hiding every task
            raise ConfigError(f"entry point {ep.name!r} = {ep.value!r} ({ENTRY_POINT_GROUP}) failed to load: {exc}") from exc
        register(_task_of(obj, f"entry point {ep.name!r} = {ep.value!r}"))
    _DISCOVERED = True  # only once every task loaded: a broken plug-in fails every call, not just the first


def _load_builtin(name: str) -> None:
    """Import only the built-in module named ``name``, when no plug-in claims that name.

    Why: every command names one task, and importing all of them (their metrics, plots, scipy,
    pandas) was 1.0 s of start-up against 0.42 s for the transients module alone. Listing the
    tasks, an unknown name or a plug-in's name still run the full discovery (and its checks).
    """
    if not name.isidentifier() or name.startswith("_") or any(ep.name == name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)):
        return
    if importlib.util.find_spec(f"{__name__}.{name}") is None:
        return
    module = importlib.import_module(f"{__name__}.{name}")
    task = getattr(module, "TASK", None)
    if isinstance(task, Task) and task.name == name:
        register(task)


def all_tasks() -> dict[str, Task]:
    if not _DISCOVERED:
        _discover()
    return dict(sorted(_REGISTRY.items()))


def get_task(name: str) -> Task:
    if not _DISCOVERED and name not in _REGISTRY:
        _load_builtin(name)
    if not _DISCOVERED and name in _REGISTRY:
        return _REGISTRY[name]
    tasks = all_tasks()
    if name not in tasks:
        raise ConfigError(f"unknown task {name!r}; available: {', '.join(tasks)}")
    return tasks[name]


def rediscover() -> None:
    """Forget discovered tasks (tests that install a plug-in distribution call this)."""
    global _DISCOVERED
    _DISCOVERED = False
    _REGISTRY.clear()


__all__ = ["Dataset", "Task", "all_tasks", "get_task", "register", "rediscover", "ENTRY_POINT_GROUP"]
