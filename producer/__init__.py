"""The producer side of editq: submitting, following and working on batches, and the CLI.

The public Python API is `import editq` (producer/client.py, typed results in producer/results.py; async in
editq/aio.py). The modules here are its implementation and may change."""
