"""docs/exporter.md documents every exposed metric with its type; the systemd unit matches the
command's defaults."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import exporter
from exporter import server
from exporter.metrics import METRICS

ROOT = Path(exporter.__file__).resolve().parents[1]
DOC = ROOT / "docs" / "exporter.md"
UNIT = Path(exporter.__file__).parent / "lxcone-exporter.service"


def test_metrics_table_lists_every_metric_with_its_type() -> None:
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\|\s*`(lxcone_\w+)`\s*\|\s*(\w+)\s*\|", line)
        if m:
            rows[m.group(1)] = m.group(2)
    assert rows == {m.name: m.type for m in METRICS}


def test_systemd_unit_runs_the_command_on_loopback_without_capabilities() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    svc = unit["Service"]
    argv = svc["ExecStart"].split()
    assert argv[0].endswith("/lxcone-exporter")
    assert argv[argv.index("--listen") + 1] == server.DEFAULT_LISTEN
    assert svc["CapabilityBoundingSet"] == ""
    assert int(svc["LimitNOFILE"]) >= 65536
    assert "LXCONE_RUN_DIR=/run/lxcone" in svc["Environment"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
