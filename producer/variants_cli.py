"""`editq report`, `editq review`, `editq continue`: looking at A/B variants and deciding on them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def report(
    batch_id: str,
    dest: Annotated[Path, typer.Option("--out", help="Folder for index.html, thumbs/ and the contact sheet.")] = Path(
        "report"),
) -> None:
    """Write a static report of a batch (one row per A/B group) that opens from disk, and a PNG contact sheet."""
    from editq.producer.report import write_report

    try:
        files = write_report(batch_id, dest)
    except KeyError as exc:
        console.print(escape(str(exc.args[0])), style="red", highlight=False)
        raise typer.Exit(1) from None
    for key in files.missing:
        console.print(f"[yellow]missing in S3[/yellow]: {key}")
    console.print(f"{files.thumbs} thumbnails, {len(files.sheets)} contact sheet page(s)")
    for sheet in files.sheets:
        console.print(f"contact sheet: {sheet}")
    out.print(str(files.index.resolve()))


def review(
    batch_id: str,
    host: Annotated[str, typer.Option(help="Interface to listen on (keep it local).")] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8765,
    reviewer: Annotated[str | None, typer.Option(help="Who decides (default: user@host).")] = None,
    cache: Annotated[Path | None, typer.Option(
        help="Thumbnail folder (default: $XDG_CACHE_HOME/editq/review/BATCH, kept so reopening is quick).")] = None,
) -> None:
    """Serve the batch's grid as a local web app: approve, reject, pick the best variant; saved to S3."""
    import uvicorn

    from editq.producer.review import ReviewSession, create_app, default_reviewer

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = cache or base / "editq" / "review" / "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in batch_id)
    console.print(f"making thumbnails in {folder}…")
    try:
        session = ReviewSession(batch_id, _storage(), folder, reviewer or default_reviewer())
    except KeyError as exc:
        console.print(escape(str(exc.args[0])), style="red", highlight=False)
        raise typer.Exit(1) from None
    console.print(f"{len(session.log.decisions)} decision(s) so far in s3://{session.storage.bucket}/{session.log.key}")
    out.print(f"review {batch_id} at http://{host}:{port}/ (Ctrl-C to stop)")
    uvicorn.run(create_app(session), host=host, port=port, log_level="warning")


def continue_(
    batch_id: str,
    extra: Annotated[list[str] | None, typer.Argument(help="More field=value overrides (after --set).")] = None,
    picked: Annotated[bool, typer.Option("--picked", help="Follow up the variant picked in each group.")] = False,
    approved: Annotated[bool, typer.Option("--approved", help="Follow up every approved variant.")] = False,
    sets: Annotated[list[str] | None, typer.Option("--set", help="field=value overrides, e.g. quality=high.")] = None,
    new_batch: Annotated[str | None, typer.Option("--batch-id", help="Id of the follow-up batch.")] = None,
    max_cost: Annotated[float | None, typer.Option(
        help="The follow-up batch's budget in USD (as `submit --max-cost`).", min=0)] = None,
    on_budget: Annotated[str, typer.Option(help="A job that does not fit the budget: 'wait' or 'fail'.")] = "wait",
    dry_run: Annotated[bool, typer.Option(
        help="Estimate and print the lines (JSONL, on stdout) instead of submitting them.")] = False,
) -> None:
    """Submit follow-up jobs for the picked (or approved) variants, linked to their originals. Their cost is
    estimated first (printed), and the batch runs under the same budget rules as any `editq submit`."""
    import json

    from editq.producer.follow_submit import continue_batch

    if picked == approved:
        console.print("[red]choose one[/red]: --picked or --approved")
        raise typer.Exit(2)
    if on_budget not in ("wait", "fail"):
        console.print("[red]--on-budget[/red] must be 'wait' or 'fail'")
        raise typer.Exit(2)
    try:
        which = "picked" if picked else "approved"
        result = continue_batch(batch_id, which=which, sets=[*(sets or []), *(extra or [])],
                                batch_id_out=new_batch, dry_run=dry_run, max_cost=max_cost, on_budget=on_budget)
    except ValueError as exc:
        console.print(f"[red]refused[/red]: {escape(str(exc))}")
        raise typer.Exit(2) from None
    except KeyError as exc:
        console.print(escape(str(exc.args[0])), style="red", highlight=False)
        raise typer.Exit(1) from None
    for jid in result.skipped:
        console.print(f"[yellow]skipped[/yellow] {jid}: it did not succeed")
    if result.estimate is not None:
        from editq.producer.estimate import render

        console.print(f"follow-up of {len(result.lines)} {'picked' if picked else 'approved'} variant(s), estimated:")
        render(result.estimate, lambda line: console.print(escape(line)))
    if dry_run:
        for line in result.lines:
            out.print(json.dumps(line), markup=False)
        return
    report = result.report
    assert report is not None
    for err in report.invalid:
        cid = f" ({escape(err.custom_id)})" if err.custom_id else ""  # user data, printed literally
        console.print(f"[red]line {err.line}[/red]{cid}: {escape(err.error)}")
    if report.refused:
        console.print("[red]refused[/red]: nothing enqueued")
        raise typer.Exit(2)
    console.print(f"follow-up of {batch_id}: enqueued {report.enqueued}, duplicates {len(report.duplicates)}, "
                  f"invalid {len(report.invalid)}")
    out.print(report.batch_id)


def _storage():
    from editq.worker.storage import get_storage

    return get_storage()


def register(app: typer.Typer) -> None:
    app.command("report")(report)
    app.command("review")(review)
    app.command("continue")(continue_)
