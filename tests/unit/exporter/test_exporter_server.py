"""lxcone-exporter: argument handling, errors, and the HTTP endpoint (in-process, loopback)."""

from __future__ import annotations

import gzip
import http.client
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter import server
from exporter.collector import CgroupCollector

from .conftest import FakeHost


@pytest.mark.parametrize(("text", "want"), [
    ("127.0.0.1:9927", ("127.0.0.1", 9927)),
    ("[::1]:80", ("::1", 80)),
    (":9927", ("", 9927)),
    ("localhost:1", ("localhost", 1)),
])
def test_parse_listen(text: str, want: tuple[str, int]) -> None:
    assert server.parse_listen(text) == want


@pytest.mark.parametrize("text", ["9927", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536",
                                  "::1:9927", "host:http", "127.0.0.1:-1"])
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="--listen"):
        server.parse_listen(text)


def test_default_listen_is_loopback() -> None:
    args = server.build_parser().parse_args([])
    host, _ = server.parse_listen(args.listen)
    assert host == "127.0.0.1"


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("ERROR: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(("argv", "needle"), [
    (["--listen", "nonsense"], "expected HOST:PORT"),
    (["--listen", "127.0.0.1:99999"], "port"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_arguments_exit_2_with_one_error_line(
        argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        rc = server.main(argv)
        raise SystemExit(rc)
    assert exc.value.code == 2
    assert needle in _error_line(capsys.readouterr().err)


def test_run_dir_that_is_a_file_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "f"
    f.write_text("")
    assert server.main(["--run-dir", str(f), "--listen", "127.0.0.1:1"]) == 2
    assert "not a directory" in _error_line(capsys.readouterr().err)


def test_run_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--run-dir, else LXCONE_RUN_DIR, else run_dir of the driver's lxcone.toml (--config or
    LXCONE_CONFIG, else the file OpenNebula copies to the host), else /run/lxcone: the
    precedence of the probes."""
    assert server.DEFAULT_CONFIG == "/var/tmp/one/etc/vmm/lxcone/lxcone.toml"
    monkeypatch.delenv("LXCONE_RUN_DIR", raising=False)
    monkeypatch.delenv("LXCONE_CONFIG", raising=False)
    host_cfg = tmp_path / "var-tmp-one.toml"
    monkeypatch.setattr(server, "DEFAULT_CONFIG", str(host_cfg))

    def run_dir(*argv: str) -> str:
        return server.resolve_run_dir(server.build_parser().parse_args(list(argv)))

    assert run_dir() == "/run/lxcone"  # no file on this host yet
    host_cfg.write_text('run_dir = "/srv/host"\n')
    assert run_dir() == "/srv/host"
    other = tmp_path / "other.toml"
    other.write_text('# edited\nrun_dir = "/srv/other"\n[not_scanned]\n')
    assert run_dir("--config", str(other)) == "/srv/other"
    monkeypatch.setenv("LXCONE_CONFIG", str(other))
    assert run_dir() == "/srv/other"
    monkeypatch.setenv("LXCONE_RUN_DIR", "/srv/env")
    assert run_dir("--config", str(other)) == "/srv/env"
    assert run_dir("--run-dir", "/srv/arg", "--config", str(other)) == "/srv/arg"


@pytest.mark.parametrize(("config", "needle"), [
    ("run_dir = [", "Invalid value"),
    ("run_dir = 1", "run_dir must be a string"),
    ('run_dir = "run"', "run_dir must be an absolute path"),
    (None, "no such file"),
])
def test_a_bad_config_exits_2_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str],
                                        config: str | None, needle: str) -> None:
    monkeypatch.delenv("LXCONE_RUN_DIR", raising=False)
    cfg = tmp_path / "lxcone.toml"
    if config is not None:
        cfg.write_text(config + "\n")
    assert server.main(["--config", str(cfg), "--listen", "127.0.0.1:1"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert str(cfg) in line and needle in line


def test_port_in_use_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        rc = server.main(["--listen", f"127.0.0.1:{port}", "--run-dir", str(tmp_path)])
    assert rc == 1
    assert "Address already in use" in _error_line(capsys.readouterr().err)


def test_address_not_on_this_host_exits_1(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 192.0.2.0/24 is TEST-NET-1: never a local address.
    rc = server.main(["--listen", "192.0.2.1:9927", "--run-dir", str(tmp_path)])
    assert rc == 1
    assert "cannot listen on 192.0.2.1:9927" in _error_line(capsys.readouterr().err)


@pytest.fixture
def served(v1_host: FakeHost) -> Iterator[tuple[int, FakeHost]]:
    coll = v1_host.collector()
    srv = server.ExporterServer("127.0.0.1", 0, coll, server.process_registry())
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_port, v1_host
    srv.shutdown()
    srv.server_close()
    t.join(5)


def _get(port: int, path: str, headers: dict[str, str] | None = None
         ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_metrics_endpoint_plain_and_gzip(served: tuple[int, FakeHost]) -> None:
    port, host = served
    host.add("one-1")
    status, headers, body = _get(port, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"lxcone_container_memory_usage_bytes", "process_resident_memory_bytes",
            "python_info", "lxcone_exporter_build_info"} <= names
    status, headers, zbody = _get(port, "/metrics", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    unzipped = gzip.decompress(zbody).decode()
    assert "lxcone_container_memory_usage_bytes{one_vm_id=\"1\"}" in unzipped


def test_other_paths(served: tuple[int, FakeHost]) -> None:
    port, _ = served
    status, _, body = _get(port, "/")
    assert status == 200 and b"/metrics" in body
    assert _get(port, "/nope")[0] == 404


def test_collector_is_usable_alone_in_any_registry(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry()
    c = CgroupCollector(tmp_path, registry=reg)
    assert b"lxcone_exporter_build_info" in generate_latest(reg)
    c.close()


def test_self_collector_matches_process_collector() -> None:
    from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

    ref = CollectorRegistry()
    ProcessCollector(registry=ref)
    ours = server.process_registry()
    ref_fams = {f.name: f for f in text_string_to_metric_families(generate_latest(ref).decode())}
    our_fams = {f.name: f for f in text_string_to_metric_families(
        generate_latest(ours).decode())}
    assert set(ref_fams) <= set(our_fams)
    for name, fam in ref_fams.items():
        assert our_fams[name].type == fam.type
    # Same fd count as listing /proc/self/fd, minus the fd the listing itself opens.
    extra = [os.open("/dev/null", os.O_RDONLY) for _ in range(5)]
    try:
        got = {s.name: s.value for f in text_string_to_metric_families(
            generate_latest(ours).decode()) for s in f.samples}
        assert got["process_open_fds"] == len(os.listdir("/proc/self/fd")) - 1
    finally:
        for fd in extra:
            os.close(fd)
