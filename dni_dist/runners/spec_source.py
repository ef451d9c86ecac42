"""Where a run's spec comes from: ``--spec module:attr`` or a built-in ``--task``.

Used by :func:`dni_dist.fit` and by the Ray actors, which load the spec by import path; it lives
here, below both, so that neither imports the other (issue 29: no import circle).
"""
from __future__ import annotations

from ..config import Config
from ..spec import Spec, load_spec


def spec_path(cfg: Config) -> str:
    """How the config names its spec: the import path, or ``task:<name>`` for a built-in task."""
    return cfg.spec or f"task:{cfg.task}"


def resolve_spec(cfg: Config) -> Spec:
    """The config's spec: ``--spec module:attr``, else the built-in ``--task``."""
    if cfg.spec:
        spec = load_spec(cfg.spec)
    else:
        from ..tasks.specs import task_spec
        spec = task_spec(cfg)
    spec.name = spec_path(cfg)
    return spec
