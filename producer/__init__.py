"""The producer side of editq: a Python API (`submit`, `submit_batch`, `status`, `wait`; after a batch:
`list_jobs`, `rerun`, `cancel_batch`) and the CLI."""

from editq.producer.api import BatchReport, cancel, status, submit, submit_batch, submit_file, wait
from editq.producer.batches import cancel_batch, list_jobs, rerun

__all__ = ["BatchReport", "cancel", "cancel_batch", "list_jobs", "rerun", "status", "submit", "submit_batch",
           "submit_file", "wait"]
