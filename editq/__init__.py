"""editq: run image-edit jobs at volume across the providers' queue APIs.

`import editq` is the Python API: `editq.submit_file`, `editq.status`, `editq.wait`, `editq.list_jobs`,
`editq.rerun`, ... (producer/client.py), with typed results (`editq.BatchStatus`, `editq.JobStatus`,
`editq.JobRow`, `editq.Estimate`, ...: producer/results.py); `editq.aio` has the same functions as coroutines.
Configuration comes from the environment (`EDITQ_*`), as for the CLI.

The project's folders (`worker/`, `schemas/`, `producer/`, `sandbox/`, `bench/`, `providers/`) live at the
repository's top level and are installed under this package only: `editq.worker`, `editq.producer`, ... (in
a checkout, `editq/<name>` is a symlink to `../<name>`). The API names are imported on first use, so
`python -m editq.sandbox` does not load the worker.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what a type checker sees; at run time the same names, imported on first use
    from editq import aio
    from editq.producer.api import BatchReport, LineError, UnknownProvider
    from editq.producer.batches import CancelReport, RerunReport, UnknownId
    from editq.producer.client import (
        batch_budget,
        batch_status,
        cancel,
        cancel_batch,
        continue_batch,
        download,
        estimate_batch,
        estimate_file,
        job_status,
        list_jobs,
        report,
        rerun,
        set_batch_budget,
        set_tenant_budget,
        status,
        submit,
        submit_batch,
        submit_file,
        tenant_budget,
        wait,
        wait_batch,
        wait_job,
    )
    from editq.producer.download import DownloadReport
    from editq.producer.follow_submit import Continued
    from editq.producer.report import ReportFiles
    from editq.producer.results import (
        BatchBudget,
        BatchStatus,
        CostLine,
        Estimate,
        InvalidLine,
        JobRow,
        JobStatus,
        Status,
        TenantBudget,
    )
    from editq.schemas.job import JobRequest
    from editq.schemas.manifest import ErrorInfo, OutputRecord, StateChange
    from editq.worker.state import State

_FUNCTIONS = ("batch_budget", "batch_status", "cancel", "cancel_batch", "continue_batch", "download",
              "estimate_batch", "estimate_file", "job_status", "list_jobs", "report", "rerun", "set_batch_budget",
              "set_tenant_budget", "status", "submit", "submit_batch", "submit_file", "tenant_budget", "wait",
              "wait_batch", "wait_job")
_API: dict[str, str] = {
    **dict.fromkeys(_FUNCTIONS, "editq.producer.client"),
    **dict.fromkeys(("BatchBudget", "BatchStatus", "CostLine", "Estimate", "InvalidLine", "JobRow", "JobStatus",
                     "Status", "TenantBudget"), "editq.producer.results"),
    **dict.fromkeys(("BatchReport", "LineError", "UnknownProvider"), "editq.producer.api"),
    **dict.fromkeys(("CancelReport", "RerunReport", "UnknownId"), "editq.producer.batches"),
    "DownloadReport": "editq.producer.download",
    "Continued": "editq.producer.follow_submit",
    "ReportFiles": "editq.producer.report",
    "JobRequest": "editq.schemas.job",
    **dict.fromkeys(("ErrorInfo", "OutputRecord", "StateChange"), "editq.schemas.manifest"),
    "State": "editq.worker.state",
}

__all__ = ["BatchBudget", "BatchReport", "BatchStatus", "CancelReport", "Continued", "CostLine", "DownloadReport",
           "ErrorInfo", "Estimate", "InvalidLine", "JobRequest", "JobRow", "JobStatus", "LineError", "OutputRecord",
           "ReportFiles", "RerunReport", "State", "StateChange", "Status", "TenantBudget", "UnknownId",
           "UnknownProvider", "aio", "batch_budget", "batch_status", "cancel", "cancel_batch", "continue_batch",
           "download", "estimate_batch", "estimate_file", "job_status", "list_jobs", "report", "rerun",
           "set_batch_budget", "set_tenant_budget", "status", "submit", "submit_batch", "submit_file",
           "tenant_budget", "wait", "wait_batch", "wait_job"]

if not TYPE_CHECKING:  # hidden from type checkers: a misspelt `editq.name` must be an error, not Any

    def __getattr__(name: str) -> Any:
        if name == "aio":
            return importlib.import_module("editq.aio")
        module = _API.get(name)
        if module is None:
            raise AttributeError(f"module 'editq' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
