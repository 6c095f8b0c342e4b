"""editq: run image-edit jobs at volume across the providers' queue APIs.

`import editq` is the Python API. The project's folders (`worker/`, `schemas/`, `producer/`, `sandbox/`,
`bench/`, `providers/`) live at the repository's top level and are installed under this package only:
`editq.worker`, `editq.producer`, ... (in a checkout, `editq/<name>` is a symlink to `../<name>`).
The API names below are imported on first use, so `python -m editq.sandbox` does not load the worker.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from editq.producer.api import BatchReport, cancel, status, submit, submit_batch, submit_file, wait
    from editq.producer.batches import cancel_batch, list_jobs, rerun

_API = {
    "BatchReport": "editq.producer.api",
    "cancel": "editq.producer.api",
    "status": "editq.producer.api",
    "submit": "editq.producer.api",
    "submit_batch": "editq.producer.api",
    "submit_file": "editq.producer.api",
    "wait": "editq.producer.api",
    "cancel_batch": "editq.producer.batches",
    "list_jobs": "editq.producer.batches",
    "rerun": "editq.producer.batches",
}

__all__ = ["BatchReport", "cancel", "cancel_batch", "list_jobs", "rerun", "status", "submit", "submit_batch",
           "submit_file", "wait"]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'editq' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
