"""Event ``format`` texts embedded in a trace.dat file: field layouts and raw-print specs.

A field's offset, size and signedness come from its ``field:`` line, so any event of any
kernel decodes. The ``print fmt`` is read only far enough to learn how ``trace-cmd report -R``
prints each field (libtraceevent ``src/event-parse.c``: ``print_field`` uses the conversion
the print format applies to ``REC->field``, with ``0x`` when the literal before it ends so,
else ``print_field_raw``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Field", "EventFormat", "RawSpec", "parse_format", "parse_header_page", "PageLayout"]

_FIELD_RE = re.compile(
    r"field:(?P<decl>[^;]*);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);"
    r"(?:\s*signed:(?P<signed>-?\d+);)?")
_ARRAY_RE = re.compile(r"^(?P<type>.*?)\s*(?P<name>[A-Za-z_]\w*)\s*\[(?P<count>[^\]]*)\]$")
_SPEC_RE = re.compile(
    r"%(?P<flags>[#0\- +]*)(?P<width>\*|\d+)?(?:\.(?P<prec>\*|\d*))?"
    r"(?P<len>hh|h|ll|l|L|z|Z|j|t)?(?P<conv>[cdiouxXsp])")
_CAST_RE = re.compile(r"^\(\s*[A-Za-z_][\w ]*\**\s*\)$")
_REC_RE = re.compile(r"^REC->(\w+)$")


@dataclass(frozen=True)
class RawSpec:
    """How ``-R`` prints one integer field: a printf conversion and an optional ``0x``."""

    spec: str  # the Python %-format (flags, width, precision, conversion)
    bits: int  # the C integer width the value is cast to before printing
    signed: bool
    prefix: str = ""
    pointer: bool = False
    char: bool = False


@dataclass(frozen=True)
class Field:
    """One field of an event record, as its ``format`` line declares it."""

    name: str
    type: str
    offset: int
    size: int
    signed: bool
    array: bool = False
    dynamic: bool = False  # __data_loc: u32 = offset | length << 16 (offset from record start)
    relative: bool = False  # __rel_loc: offset counted from the end of this field
    string: bool = False
    pointer: bool = False
    long: bool = False


@dataclass
class EventFormat:
    """An event's id, name, system, fields (common fields first) and raw-print specs."""

    id: int
    name: str
    system: str
    common: list[Field]
    fields: list[Field]
    print_fmt: str = ""
    raw_specs: dict[str, RawSpec] = field(default_factory=dict)

    @property
    def fixed_size(self) -> int:
        """Bytes every record of this event has (end of the last field)."""
        return max((f.offset + f.size for f in self.common + self.fields), default=0)

    def find(self, name: str) -> Field | None:
        """The common or event field called ``name``."""
        for f in self.common + self.fields:
            if f.name == name:
                return f
        return None


def parse_format(text: str, system: str) -> EventFormat | None:
    """Parse one ``format`` file text; ``None`` when it has no name or id."""
    name = re.search(r"^name:\s*(\S+)", text, re.M)
    ident = re.search(r"^ID:\s*(\d+)", text, re.M)
    if not name or not ident:
        return None
    common: list[Field] = []
    fields: list[Field] = []
    for m in _FIELD_RE.finditer(text):
        f = _field(m)
        if f is not None:
            (common if f.name.startswith("common_") else fields).append(f)
    pf = text.split("print fmt:", 1)
    ev = EventFormat(int(ident.group(1)), name.group(1), system, common, fields,
                     pf[1].strip() if len(pf) == 2 else "")
    ev.raw_specs = _raw_specs(ev)
    return ev


def _field(m: re.Match[str]) -> Field | None:
    decl = m["decl"].strip()
    offset, size = int(m["offset"]), int(m["size"])
    dynamic = decl.startswith("__data_loc")
    relative = decl.startswith("__rel_loc")
    if dynamic or relative:
        decl = decl.split(None, 1)[1] if " " in decl else decl
    arr = _ARRAY_RE.match(decl)
    if arr:
        # ``u32 buf[]`` of size 0 is not an array to libtraceevent: it prints as a number
        typ, name, array = arr["type"].strip(), arr["name"], bool(arr["count"].strip())
    else:
        parts = decl.rsplit(None, 1)
        if len(parts) != 2:
            return None
        typ, name, array = parts[0].strip(), parts[1].lstrip("*"), False
        if parts[1].startswith("*"):
            typ += " *"
    if dynamic or relative:
        array = True
    signed = (m["signed"] == "1") if m["signed"] is not None else not typ.startswith(
        ("unsigned", "u8", "u16", "u32", "u64", "__u", "bool"))
    return Field(
        name, typ, offset, size, signed, array=array, dynamic=dynamic, relative=relative,
        string=array and "char" in typ, pointer="*" in typ,
        long=typ in ("long", "unsigned long"))


def _split_args(text: str) -> tuple[str, list[str]]:
    """Split ``"fmt", arg, arg`` into the unescaped format and the top-level args."""
    if not text.startswith('"'):
        return "", []
    i, out = 1, []
    while i < len(text) and text[i] != '"':
        if text[i] == "\\" and i + 1 < len(text):
            out.append({"n": "\n", "t": "\t", "r": "\r"}.get(text[i + 1], text[i + 1]))
            i += 2
            continue
        out.append(text[i])
        i += 1
    args: list[str] = []
    cur: list[str] = []
    depth, quote = 0, False
    for ch in text[i + 1:]:
        if ch == '"':
            quote = not quote
        if not quote and ch in "([":
            depth += 1
        elif not quote and ch in ")]":
            depth -= 1
        if ch == "," and depth == 0 and not quote:
            args.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        args.append("".join(cur).strip())
    return "".join(out), [a for a in args if a]


def _arg_field(arg: str) -> str | None:
    """The field name when ``arg`` is ``REC->name`` under casts and parentheses."""
    text = arg.strip()
    for _ in range(8):
        if not text.startswith("("):
            break
        close = _matching(text)
        if close < 0:
            return None
        inner = text[1:close]
        if close == len(text) - 1:
            text = inner.strip()
        elif _CAST_RE.match(text[:close + 1]) and "REC" not in inner:
            text = text[close + 1:].strip()
        else:
            return None
    rec = _REC_RE.match(text)
    return rec.group(1) if rec else None


def _matching(text: str) -> int:
    depth = 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if depth == 0:
            return i
    return -1


def _segments(fmt: str, args: list[str]) -> list[tuple[str, RawSpec | None, str | None]]:
    """The print format as (literal-before, spec, field) items, one per conversion."""
    segs: list[tuple[str, RawSpec | None, str | None]] = []
    pos, argi = 0, 0
    literal: list[str] = []
    while pos < len(fmt):
        if fmt.startswith("%%", pos):
            literal.append("%")
            pos += 2
            continue
        m = _SPEC_RE.match(fmt, pos) if fmt[pos] == "%" else None
        if m is None:
            literal.append(fmt[pos])
            pos += 1
            continue
        argi += (m["width"] == "*") + (m["prec"] == "*")
        arg = args[argi] if argi < len(args) else ""
        argi += 1
        pos = m.end()
        if m["conv"] == "p" and pos < len(fmt) and fmt[pos] in "FfSsMmIiUhBbRrKk":
            pos += 1
            while pos < len(fmt) and fmt[pos] in "RFcbhnlBLDCN46SpfsUu" and fmt[pos - 1] != " ":
                pos += 1
                break
        segs.append(("".join(literal), _spec(m), _arg_field(arg)))
        literal = []
    return segs


def _spec(m: re.Match[str]) -> RawSpec:
    ls = {"hh": -2, "h": -1, None: 0, "l": 1, "ll": 2, "L": 2, "z": 1, "Z": 1,
          "j": 2, "t": 1}[m["len"]]
    bits = {-2: 8, -1: 16, 0: 32, 1: 64, 2: 64}[ls]
    conv = m["conv"]
    width = "" if m["width"] in (None, "*") else m["width"]
    prec = "" if m["prec"] is None or m["prec"] == "*" else "." + m["prec"]
    pyconv = {"i": "d", "u": "d", "p": "x"}.get(conv, conv)
    return RawSpec(f"%{m['flags'] or ''}{width}{prec}{pyconv}", bits, conv in "di",
                   pointer=conv == "p", char=conv == "c")


def _raw_specs(ev: EventFormat) -> dict[str, RawSpec]:
    """Per field, the spec ``print_field`` would find walking the format cyclically."""
    fmt, args = _split_args(ev.print_fmt)
    if ev.system == "ftrace":
        if ev.name in ("bprint", "bputs", "print"):
            return {}
        args = [f"REC->{f.name}" for f in ev.fields]  # old ftrace formats list no args
    segs = [s for s in _segments(fmt, args) if s[1] is None or not s[1].spec.endswith("s")]
    out: dict[str, RawSpec] = {}
    start = 0
    for f in ev.fields:
        if f.array or f.string or not segs:
            continue
        for k in range(len(segs)):
            i = (start + k) % len(segs)
            literal, spec, fname = segs[i]
            if fname == f.name and spec is not None:
                prefix = "0x" if literal.endswith("0x") else ""
                out[f.name] = RawSpec(spec.spec, spec.bits, spec.signed, prefix,
                                      spec.pointer, spec.char)
                start = i + 1
                break
    return out


@dataclass(frozen=True)
class PageLayout:
    """Offsets and sizes of the ring-buffer page header (``events/header_page``)."""

    ts_offset: int = 0
    commit_offset: int = 8
    commit_size: int = 8
    data_offset: int = 16


def parse_header_page(text: str, long_size: int) -> PageLayout:
    """The page header layout; a file without one falls back to the file's long size."""
    found = {m["decl"].split()[-1]: (int(m["offset"]), int(m["size"]))
             for m in _FIELD_RE.finditer(text)}
    if "commit" not in found or "data" not in found:
        return PageLayout(0, 8, long_size, 8 + long_size)
    return PageLayout(found.get("timestamp", (0, 8))[0], found["commit"][0], found["commit"][1],
                      found["data"][0])
