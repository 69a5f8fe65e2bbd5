"""``langfuse-dq quarantine``: list, show, retry and purge what the server refused."""

from __future__ import annotations

import json
from typing import Optional

import click

from ..config import parse_duration
from ..quarantine import (
    UnknownQuarantineId,
    batch_ids,
    list_batches,
    load_batch,
    purge_batches,
    retry_batches,
    salvage,
)
from ..spawn import FlusherSupervisor
from .common import EXIT_FAILED, CliError, common_options, load_config, open_dir


@click.group()
def quarantine() -> None:
    """Inspect, retry or purge events the server refused."""


@quarantine.command("list")
@click.option("--json", "as_json", is_flag=True, help="A JSON array with stable keys.")
@common_options
def list_command(queue_dir: Optional[str], debug: bool, as_json: bool) -> None:
    """List quarantined batches: id, events, first/last failure, reason."""
    qd = open_dir(load_config(queue_dir))
    for name in salvage(qd):
        click.echo(
            f"langfuse-dq: quarantine file {name} was unreadable; moved to corrupt-*/ in {qd.root}",
            err=True,
        )
    batches, unreadable = list_batches(qd)
    if as_json:
        click.echo(json.dumps(batches, indent=2))
    elif not batches:
        click.echo("quarantine is empty")
    else:
        for batch in batches:
            reason = " ".join(str(batch.get("reason") or "").split())
            click.echo(
                f"{batch['id']}  {batch['events']:>5} events  status {batch.get('status') or '-'}  "
                f"first {batch.get('first_failure_at')}  last {batch.get('last_failure_at')}\n"
                f"    {reason[:200]}"
            )
    for name in unreadable:
        click.echo(f"langfuse-dq: unreadable quarantine file {name} (left in place)", err=True)


@quarantine.command("show")
@click.argument("batch_id")
@common_options
def show_command(queue_dir: Optional[str], debug: bool, batch_id: str) -> None:
    """Show one batch: its events and what the server answered."""
    qd = open_dir(load_config(queue_dir))
    try:
        record = load_batch(qd, batch_id)
    except UnknownQuarantineId:
        raise CliError(f"no quarantined batch with id {batch_id!r}", EXIT_FAILED) from None
    click.echo(json.dumps(record, indent=2, ensure_ascii=False))


def _ids(qd: object, ids: tuple[str, ...], all_: bool) -> list[str]:
    if all_ and ids:
        raise click.UsageError("give batch ids or --all, not both")
    if not all_ and not ids:
        raise click.UsageError("give one or more batch ids, or --all")
    return batch_ids(qd) if all_ else list(ids)  # type: ignore[arg-type]


@quarantine.command("retry")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every quarantined batch.")
@common_options
def retry_command(queue_dir: Optional[str], debug: bool, ids: tuple[str, ...], all_: bool) -> None:
    """Put the events back in the queue, unchanged (same ids), to be delivered again."""
    config = load_config(queue_dir)
    qd = open_dir(config)
    chosen = _ids(qd, ids, all_)
    try:
        count = retry_batches(qd, chosen)
    except UnknownQuarantineId as exc:
        raise CliError(f"no quarantined batch with id {exc.args[0]!r}", EXIT_FAILED) from None
    click.echo(f"{count} events from {len(chosen)} batches are queued again")
    if config.has_keys and config.autospawn:
        FlusherSupervisor(config, qd).check(background=False)
    else:
        click.echo("run `langfuse-dq flush` (or a flusher) to deliver them")


@quarantine.command("purge")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every quarantined batch.")
@click.option(
    "--older-than", default=None, help="Only batches that first failed longer ago, e.g. 7d."
)
@common_options
def purge_command(
    queue_dir: Optional[str],
    debug: bool,
    ids: tuple[str, ...],
    all_: bool,
    older_than: Optional[str],
) -> None:
    """Delete quarantined batches for good."""
    qd = open_dir(load_config(queue_dir))
    chosen = _ids(qd, ids, all_)
    age = parse_duration(older_than, "--older-than") if older_than else None
    removed = purge_batches(qd, chosen, older_than=age)
    click.echo(f"purged {removed} batches")
