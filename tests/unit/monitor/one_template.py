"""A strict reader of OpenNebula template text, written from ONE's lexer and grammar
(src/parsers/template_parser.l, template_syntax.y), to judge the probes' output.

Stricter than ONE in one way: every attribute must sit on one line (the probes promise that).
Faithful to ONE where it matters:
- NAME is [A-Za-z0-9_]+; blanks (space, tab) may surround '=';
- a quoted value ends at the first '"' not preceded by a backslash (flex takes the longest
  match of "([^"]|\\")*", so a value ending in a backslash would run on into the next line:
  that is an error here), and ``\\"`` reads back as '"' (ONE's unescape);
- a bare value is [^=#<blank>\\n,\\[\\]]+;
- ``]]>`` anywhere after the '=' aborts ONE's parser: an error here;
- ``NAME = [ A = v, B = v ]`` is a vector (keys upper-cased, as ONE does).
"""

from __future__ import annotations

import re

NAME = re.compile(r"[A-Za-z0-9_]+")
BARE = re.compile(r"[^=#\s,\[\]]+")
BLANKS = " \t"


class TemplateError(ValueError):
    pass


def _skip(s: str, i: int, chars: str = BLANKS) -> int:
    while i < len(s) and s[i] in chars:
        i += 1
    return i


def _name(line: str, i: int) -> tuple[str, int]:
    m = NAME.match(line, i)
    if not m:
        raise TemplateError(f"expected a NAME at column {i}: {line!r}")
    return m.group(0), m.end()


def _equal(line: str, i: int) -> int:
    i = _skip(line, i)
    if i >= len(line) or line[i] != "=":
        raise TemplateError(f"expected '=' at column {i}: {line!r}")
    return _skip(line, i + 1)


def _value(line: str, i: int) -> tuple[str, int]:
    if i < len(line) and line[i] == '"':
        j = i + 1
        while True:
            j = line.find('"', j)
            if j < 0:
                raise TemplateError(f"quoted value runs past the end of the line: {line!r}")
            if line[j - 1] != "\\":
                break
            j += 1
        return line[i + 1:j].replace('\\"', '"'), j + 1
    m = BARE.match(line, i)
    if not m:
        raise TemplateError(f"expected a value at column {i}: {line!r}")
    return m.group(0), m.end()


def parse_line(line: str) -> tuple[str, str | dict[str, str]]:
    """One attribute line -> (NAME, value) or (NAME, {KEY: value}) for a vector."""
    if any(ord(c) < 32 and c != "\t" for c in line):
        raise TemplateError(f"control character in {line!r}")
    name, i = _name(line, _skip(line, 0))
    i = _equal(line, i)
    if "]]>" in line[i:]:
        raise TemplateError(f"']]>' makes ONE's template parser abort: {line!r}")
    if i < len(line) and line[i] == "[":
        vec: dict[str, str] = {}
        i = _skip(line, i + 1)
        if i < len(line) and line[i] == "]":
            i += 1
        else:
            while True:
                key, i = _name(line, _skip(line, i))
                i = _equal(line, i)
                value, i = _value(line, i)
                if key.upper() in vec:
                    raise TemplateError(f"duplicate {key} in {line!r}")
                vec[key.upper()] = value
                i = _skip(line, i)
                if i < len(line) and line[i] == ",":
                    i += 1
                    continue
                if i < len(line) and line[i] == "]":
                    i += 1
                    break
                raise TemplateError(f"expected ',' or ']' at column {i}: {line!r}")
        if _skip(line, i) != len(line):
            raise TemplateError(f"trailing text after ']': {line!r}")
        return name, vec
    value, i = _value(line, i)
    if _skip(line, i) != len(line):
        raise TemplateError(f"trailing text after the value: {line!r}")
    return name, value


def parse(text: str) -> list[tuple[str, str | dict[str, str]]]:
    """Every line of ``text`` (split on '\\n' only) as an attribute; blank lines are allowed,
    comment lines are not (the probes never print them)."""
    out = []
    for line in text.split("\n"):
        if line.strip(BLANKS):
            out.append(parse_line(line))
    return out


def as_dict(text: str) -> dict[str, str | dict[str, str]]:
    """parse() for templates whose names are unique."""
    attrs = parse(text)
    d = dict(attrs)
    if len(d) != len(attrs):
        raise TemplateError(f"repeated attribute in {text!r}")
    return d
