"""Template quoting: any value, however hostile, gives one line that ONE's parser reads back."""

from __future__ import annotations

import base64

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from lxcone.monitor.template import attr, b64, quote, vector, vm_line

from .one_template import TemplateError, parse, parse_line


def expected(value: str) -> str:
    """What quote() promises to keep of ``value``."""
    s = "".join(" " if (not c.isprintable()) else c for c in value)
    while "]]>" in s:
        s = s.replace("]]>", "]] >")
    return s.rstrip("\\")


@given(st.text())
@example('a"b')
@example("a\\")
@example('a\\"b')
@example('\\"')
@example("x]]>y")
@example("]]]>>")
@example("line1\nline2\r\n")
@example("tab\there")
@example("\u2028sep\u0085nel\x00nul\x7fdel")
@example('" , B="x" ]\nVM = [ ID="1"')
def test_any_value_reads_back_on_one_line(value: str) -> None:
    line = attr("NAME", value)
    assert "\n" not in line and "\r" not in line
    name, parsed = parse_line(line)
    assert name == "NAME"
    assert parsed == expected(value)


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Cf",
                                                            "Co", "Cn", "Zs")), min_size=1))
def test_printable_values_are_kept_exactly(value: str) -> None:
    if value.endswith("\\") or "]]>" in value:
        return
    assert parse_line(attr("K", value))[1] == value


@given(st.lists(st.tuples(st.from_regex(r"[A-Z][A-Z_0-9]{0,8}", fullmatch=True), st.text()),
                min_size=1, max_size=6, unique_by=lambda kv: kv[0]))
def test_vectors_of_hostile_values_parse(pairs: list[tuple[str, str]]) -> None:
    line = vector("DS", pairs)
    name, vec = parse_line(line)
    assert name == "DS"
    assert vec == {k: expected(v) for k, v in pairs}


@given(st.text(), st.text())
def test_a_hostile_value_cannot_break_the_next_line(a: str, b: str) -> None:
    text = attr("A", a) + "\n" + attr("B", b) + "\n" + 'VM = [ ID="1", DEPLOY_ID="one-1" ]\n'
    attrs = parse(text)
    assert [n for n, _ in attrs] == ["A", "B", "VM"]
    assert attrs[2][1] == {"ID": "1", "DEPLOY_ID": "one-1"}


def test_numbers_are_bare_strings_quoted() -> None:
    assert attr("TOTALCPU", 200) == "TOTALCPU=200"
    assert attr("HOSTNAME", "node 1") == 'HOSTNAME="node 1"'
    assert attr("FLAG", True) == 'FLAG="True"'  # bool is not a number here
    assert quote(12) == '"12"'


def test_vm_line_is_ones_format() -> None:
    line = vm_line(12, "one-12", "STATE", "RUNNING")
    assert line == 'VM = [ ID="12", DEPLOY_ID="one-12", STATE="RUNNING" ]'
    assert parse_line(line) == ("VM", {"ID": "12", "DEPLOY_ID": "one-12", "STATE": "RUNNING"})


def test_b64_is_one_line_and_decodes() -> None:
    text = 'CPU="1.50"\nMEMORY="1024"\n' * 200
    enc = b64(text)
    assert "\n" not in enc and base64.b64decode(enc).decode() == text


@pytest.mark.parametrize("bad", [
    'K="a\\"',                 # value ending in a backslash swallows the rest
    'K="a"b"',                 # bare quote inside
    'K="x]]>"',                # CDATA terminator aborts ONE's parser
    "K=a b",                   # blank inside a bare value
    "K",                       # no '='
    "K-1=2",                   # '-' is not a NAME character
    'V=[ A="1" B="2" ]',       # missing comma
    'V=[ A="1", ]',            # dangling comma
    'K="a\x01b"',              # control character
])
def test_the_strict_reader_rejects_what_one_would_misread(bad: str) -> None:
    with pytest.raises(TemplateError):
        parse_line(bad)


def test_the_strict_reader_accepts_ones_own_examples() -> None:
    text = ("ARCH=x86_64\nMODELNAME=\"Intel(R) Xeon(R) CPU E5-2620 0 @ 2.00GHz\"\n"
            "DS_LOCATION_USED_MB  = 10417\nDS = [ ID = 0, USED_MB  = 10417, TOTAL_MB = 59371 ]\n"
            'VM = [ ID="12", DEPLOY_ID="one-12", MONITOR="Q1BVPSIxLjUiCg=="]\n'
            "EMPTY=[]\n")
    d = dict(parse(text))
    assert d["DS_LOCATION_USED_MB"] == "10417"
    assert d["DS"] == {"ID": "0", "USED_MB": "10417", "TOTAL_MB": "59371"}
    assert d["VM"]["MONITOR"] == "Q1BVPSIxLjUiCg=="
    assert d["EMPTY"] == {}
