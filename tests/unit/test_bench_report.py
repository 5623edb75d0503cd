"""The relay benchmark's report: ratios and CPU per message computed from its rows."""

from bench.cpu import Usage
from bench.relay import LEVELS, Plan, Row, report


def row(design: str, n: int, rate: float, servers: float) -> Row:
    return Row(design, "closed", n, rate, int(rate * 5), 1.0, 2.0, 3.0, Usage(servers, 50, 180))


def test_report_gives_the_ratio_and_server_cpu_per_message() -> None:
    top = LEVELS[-1]
    rows = [row("a", top, 40_000, 100), row("b", top, 10_000, 125)]
    text = report(rows, Plan.make(quick=True), quick=True, elapsed=1.0)
    lines = text.splitlines()
    a_line = next(line for line in lines if line.lstrip().startswith(f"{top}  (a)"))
    b_line = next(line for line in lines if line.lstrip().startswith(f"{top}  (b)"))
    assert a_line.split()[-1] == "25.0"  # 100 % of a core / 40,000 msgs/s = 25 us
    assert b_line.split()[-2:] == ["125.0", "0.25"]  # 125 % / 10,000; 10,000 / 40,000
    assert f"(b)/(a) msgs/s at {top} connections >= 1.0: 0.25  MISSED" in text
    assert (
        "message (no target; steadier than msgs/s on a busy machine): 125.0 us, 5.00 x (a)'s 25.0 us"
        in text
    )
