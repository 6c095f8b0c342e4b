"""The producer side of editq: a Python API (`submit`, `submit_batch`, `status`, `wait`) and the CLI."""

from producer.api import (
    BatchReport,
    cancel,
    set_batch_budget,
    set_tenant_budget,
    status,
    submit,
    submit_batch,
    submit_file,
    wait,
)
from producer.estimate import estimate_file

__all__ = ["BatchReport", "cancel", "estimate_file", "set_batch_budget", "set_tenant_budget", "status", "submit",
           "submit_batch", "submit_file", "wait"]
