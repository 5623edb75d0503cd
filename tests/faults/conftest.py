"""Fault-injection fixtures: one real multi-process stack for the package — NATS, two
gateways, two replicas of each service, default settings — put back into that shape
before and after every case, so each case starts from a healthy topology without paying
for a whole new stack."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from switchboard.localstack import SERVICES, LocalStack, running
from tests.faults.load import REPORTS
from tests.faults.topology import GATEWAYS, REPLICAS, restore


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    replicas = dict.fromkeys(SERVICES, REPLICAS)
    with running(tmp_path_factory.mktemp("faults"), gateways=GATEWAYS, replicas=replicas) as s:
        yield s


@pytest.fixture
def topology(stack: LocalStack) -> Iterator[LocalStack]:
    restore(stack)
    yield stack
    restore(stack)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """The figures of every case run, as the table in docs/reliability.md."""
    if not REPORTS:
        return
    from tests.faults.report import markdown

    table = markdown(REPORTS)
    terminalreporter.write_sep("=", "fault-injection figures")
    terminalreporter.write_line(table)
    out = os.environ.get("SB_FAULTS_REPORT")
    if out:
        Path(out).write_text(table + "\n")
        terminalreporter.write_line(f"(written to {out})")
