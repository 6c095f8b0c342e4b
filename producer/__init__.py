"""The producer side of editq: a Python API (`submit`, `submit_batch`, `status`, `wait`) and the CLI."""

from producer.api import BatchReport, cancel, status, submit, submit_batch, submit_file, wait

__all__ = ["BatchReport", "cancel", "status", "submit", "submit_batch", "submit_file", "wait"]
