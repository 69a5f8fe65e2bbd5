"""``langfuse-dq status``: what is queued, delivered, quarantined, dropped; is a flusher alive.

``--json`` prints the object ``Langfuse.stats()`` returns (stable keys); ``--prometheus``
prints the same figures in the text exposition format, for node_exporter's textfile
collector; ``--max-age S`` makes the exit status 1 when the oldest pending event is older
than S seconds (a cron or Nagios style alert).
"""

from __future__ import annotations

import json
from typing import Any, Optional

import click

from ..queuedir import QueueDirError, open_queue_dir
from ..stats import empty_stats, queue_stats
from .common import EXIT_FAILED, common_options, load_config, open_dir


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object with stable keys.")
@click.option("--prometheus", is_flag=True, help="Prometheus text exposition format.")
@click.option(
    "--max-age",
    type=click.FloatRange(min=0.0),
    default=None,
    help="Exit 1 when the oldest pending event is older than this many seconds.",
)
@common_options
def status(
    queue_dir: Optional[str], debug: bool, as_json: bool, prometheus: bool, max_age: Optional[float]
) -> None:
    """Show the state of the queue directory."""
    if as_json and prometheus:
        raise click.UsageError("choose one of --json and --prometheus")
    config = load_config(queue_dir)
    try:
        qd = open_queue_dir(config.queue_dir, create=False)
    except QueueDirError as exc:
        if "does not exist" not in str(exc.strerror or exc):
            open_dir(config)  # raises the one-line error
        stats = empty_stats(config.queue_dir)
    else:
        stats = queue_stats(qd)
    if as_json:
        click.echo(json.dumps(stats, indent=2, sort_keys=True))
    elif prometheus:
        click.echo(prometheus_text(stats), nl=False)
    else:
        click.echo(human_text(stats))
    age = stats.get("oldest_pending_age_s")
    if max_age is not None and isinstance(age, (int, float)) and age > max_age:
        click.echo(
            f"langfuse-dq: oldest pending event is {age:.0f}s old (limit {max_age:g}s)", err=True
        )
        raise SystemExit(EXIT_FAILED)


def human_text(stats: dict[str, Any]) -> str:
    """A few aligned lines for people."""
    age = stats.get("oldest_pending_age_s")
    flusher = "not running"
    if stats.get("flusher_pid"):
        flusher = f"pid {stats['flusher_pid']} ({'alive' if stats['flusher_alive'] else 'dead'})"
    dropped = stats.get("dropped", 0)
    reasons = ", ".join(
        f"{k}: {v}" for k, v in sorted((stats.get("dropped_by_reason") or {}).items())
    )
    rows = [
        ("queue directory", stats.get("queue_dir")),
        ("pending", f"{stats['pending']} events, {stats['pending_bytes']} bytes"),
        ("oldest pending", f"{age:.1f}s ago" if isinstance(age, (int, float)) else "-"),
        ("in flight", stats.get("in_flight", 0)),
        ("delivered", stats.get("delivered", 0)),
        ("retried", stats.get("retried", 0)),
        ("duplicate risk", stats.get("duplicate_risk", 0)),
        (
            "quarantined",
            f"{stats['quarantined']} events in {stats.get('quarantined_batches', 0)} batches",
        ),
        ("dropped", f"{dropped}" + (f" ({reasons})" if reasons else "")),
        ("flusher", flusher),
        ("last success", stats.get("last_success_at") or "-"),
        ("last error", _error(stats.get("last_error"), stats.get("last_error_at"))),
    ]
    if stats.get("auth_error"):
        rows.append(("auth error", stats["auth_error"]))
    for extra in (
        "torn_lines",
        "corrupt_lines",
        "corrupt_segments",
        "corrupt_state",
        "corrupt_files",
    ):
        if stats.get(extra):
            rows.append((extra.replace("_", " "), stats[extra]))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def _error(message: Any, at: Any) -> str:
    if not message:
        return "-"
    return f"{message} (at {at})" if at else str(message)


_METRICS = (
    ("pending", "gauge", "langfuse_dq_pending_events", "Events queued and not yet delivered."),
    ("pending_bytes", "gauge", "langfuse_dq_pending_bytes", "Bytes of queued events."),
    (
        "oldest_pending_age_s",
        "gauge",
        "langfuse_dq_oldest_pending_age_seconds",
        "Age of the oldest pending event.",
    ),
    ("in_flight", "gauge", "langfuse_dq_in_flight_events", "Events sent and not yet acknowledged."),
    (
        "delivered",
        "counter",
        "langfuse_dq_delivered_events_total",
        "Events accepted by the server.",
    ),
    ("retried", "counter", "langfuse_dq_retried_events_total", "Event sends retried."),
    (
        "duplicate_risk",
        "counter",
        "langfuse_dq_duplicate_risk_events_total",
        "Events possibly sent twice after a crash or timeout.",
    ),
    ("quarantined", "gauge", "langfuse_dq_quarantined_events", "Events in quarantine."),
    ("quarantined_batches", "gauge", "langfuse_dq_quarantined_batches", "Batches in quarantine."),
)


def prometheus_text(stats: dict[str, Any]) -> str:
    """The figures as Prometheus metrics (text exposition format 0.0.4)."""
    lines: list[str] = []
    directory = str(stats.get("queue_dir", "")).replace("\\", "\\\\").replace('"', '\\"')
    label = f'{{queue_dir="{directory}"}}'
    for key, kind, name, help_text in _METRICS:
        value = stats.get(key)
        if value is None:
            continue
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name}{label} {value}"]
    name = "langfuse_dq_dropped_events_total"
    lines += [f"# HELP {name} Events dropped, by reason.", f"# TYPE {name} counter"]
    reasons = stats.get("dropped_by_reason") or {}
    if not reasons:
        lines.append(f'{name}{{queue_dir="{directory}",reason="none"}} 0')
    for reason, count in sorted(reasons.items()):
        safe = str(reason).replace('"', "")
        lines.append(f'{name}{{queue_dir="{directory}",reason="{safe}"}} {count}')
    name = "langfuse_dq_flusher_up"
    lines += [f"# HELP {name} 1 when a flusher process is alive.", f"# TYPE {name} gauge"]
    lines.append(f"{name}{label} {1 if stats.get('flusher_alive') else 0}")
    last = stats.get("last_success_at")
    if isinstance(last, str):
        from ..timeutil import ns_from_iso  # noqa: PLC0415 (rarely needed)

        name = "langfuse_dq_last_success_timestamp_seconds"
        lines += [f"# HELP {name} When the server last accepted a request.", f"# TYPE {name} gauge"]
        lines.append(f"{name}{label} {ns_from_iso(last) / 1e9:.3f}")
    return "\n".join(lines) + "\n"
