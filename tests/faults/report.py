"""The summary table of the fault cases (printed after the run; docs/reliability.md)."""

from __future__ import annotations

from tests.faults.load import Report

COLUMNS = (
    "case",
    "requests sent",
    "request error frames",
    "re-sent after a drop",
    "room msgs sent",
    "acked",
    "re-sends acked as duplicate",
    "delivered / expected",
    "recovered with since",
    "lost",
    "duplicated",
    "room error frames",
    "reconnects",
    "longest wait",
    "longest stall",
)


def row(r: Report) -> list[str]:
    return [
        f"`{r.case}`",
        str(r.requests),
        str(r.request_errors),
        str(r.request_resent),
        f"{r.published} ({r.publish_frames} frames)",
        str(r.acknowledged),
        str(r.duplicate_acks),
        f"{r.delivered} / {r.expected}",
        str(r.replayed),
        str(r.lost),
        str(r.duplicated),
        str(r.room_errors),
        str(r.reconnects),
        f"{r.max_wait:.2f} s",
        f"{r.stall:.2f} s",
    ]


def markdown(reports: list[Report]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(r)) + " |" for r in reports]
    return "\n".join(lines)
