"""`make demo` / `editq demo`: a real batch end to end on a machine with nothing running."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from editq.producer.stack import LocalStack

console = Console(soft_wrap=True)


def run_demo(batch: Path, dest: Path) -> int:
    t0 = time.monotonic()
    console.print("[bold]editq demo[/bold]: starting what is missing (Redis, S3, sandbox, receiver, worker)…")
    with LocalStack(sandbox_opts={"latency_s": 1.0, "jitter_s": 0.5, "concurrency": 8}, worker_concurrency=16) as stack:
        env = stack.env
        console.print(f"  redis     {env['EDITQ_REDIS_URL']}{' (embedded)' if stack._embedded_redis else ''}")
        console.print(f"  s3        {env['EDITQ_S3_ENDPOINT']} bucket {env['EDITQ_S3_BUCKET']}")
        console.print(f"  sandbox   {env['EDITQ_SANDBOX_URL']} (provider emulator; no money spent)")
        console.print(f"  webhooks  {env.get('EDITQ_WEBHOOK_BASE_URL')}")
        console.print(f"  logs      {stack.log_dir}")

        from editq.producer.api import submit_file
        from editq.producer.cli import _watch
        from editq.producer.download import download_batch

        report = submit_file(batch)
        console.print(f"batch [bold]{report.batch_id}[/bold]: enqueued {report.enqueued}, "
                      f"duplicates {len(report.duplicates)}, invalid {len(report.invalid)}")
        for err in report.invalid:
            console.print(f"  [yellow]line {err.line}[/yellow] ({escape(str(err.custom_id))}): {escape(err.error)}")
        st = _watch(report.batch_id)
        got = download_batch(report.batch_id, dest)
        n = got.written + got.skipped
        failed = st["counts"].get("failed", 0)
        folder = dest / report.batch_id
        from editq.producer.report import write_report

        files = write_report(report.batch_id, folder / "report")
        console.print(f"\n[bold green]done[/bold green] in {time.monotonic() - t0:.0f}s: "
                      f"{st['counts'].get('succeeded', 0)} succeeded, {failed} failed")
        console.print(f"  outputs and manifests: {folder}/  ({n} files)")
        console.print(f"  batch manifest:        {folder / 'manifest.jsonl'}")
        console.print(f"  in S3:                 s3://{env['EDITQ_S3_BUCKET']}/{st['manifest_key']}")
        assert files.report is not None
        console.print(f"  A/B report:            {files.index.resolve()}  ({files.report.summary.groups} groups; "
                      "open it in a browser, no server needed)")
        console.print(f"  contact sheet:         {files.sheets[0].resolve()}")
        console.print("stopping what the demo started…")
    return 0 if failed == 0 and report.enqueued > 0 else 1
