"""Read Jane Austen's novels out of Debian's ``r-cran-janeaustenr`` package without R.

The package stores each novel as an R character vector inside an R *lazy-load database*
(``data/Rdata.rdx`` index + ``data/Rdata.rdb`` blobs). Both use R's XDR serialisation, of which
we only need the handful of object types a character-vector data package contains. This module
is the provenance record of the text shipped in ``austen.txt.xz``: ``build.py`` calls it when the
corpus is regenerated from the ``.deb``.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from pathlib import Path
from typing import Any

# R SEXP type codes (R Internals, "Serialization formats").
_NILVALUE = 254
_REFSXP = 255
_SYMSXP = 1
_LISTSXP = 2
_CHARSXP = 9
_LGLSXP = 10
_INTSXP = 13
_REALSXP = 14
_STRSXP = 16
_VECSXP = 19

_HAS_ATTR = 1 << 9
_HAS_TAG = 1 << 10

NOVEL_KEYS = (
    "sensesensibility",
    "prideprejudice",
    "mansfieldpark",
    "emma",
    "northangerabbey",
    "persuasion",
)
"""The six novels, in publication order, as janeaustenr names them."""


class _XdrReader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def int32(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.offset)
        self.offset += 4
        return value

    def take(self, n: int) -> bytes:
        chunk = self.data[self.offset : self.offset + n]
        self.offset += n
        return chunk

    def read_object(self, symbols: list[Any]) -> Any:
        flags = self.int32()
        return self._read_body(flags, symbols)

    def _read_body(self, flags: int, symbols: list[Any]) -> Any:
        kind = flags & 0xFF
        if kind == _NILVALUE:
            return None
        if kind == _REFSXP:
            return symbols[(flags >> 8) - 1]
        if kind == _CHARSXP:
            length = self.int32()
            return None if length == -1 else self.take(length).decode("utf-8", "replace")
        if kind == _SYMSXP:
            name = self.read_object(symbols)
            symbols.append(name)
            return name
        if kind == _STRSXP:
            values = [self.read_object(symbols) for _ in range(self.int32())]
            self._skip_attributes(flags, symbols)
            return values
        if kind in (_LGLSXP, _INTSXP, _REALSXP):
            n = self.int32()
            width, code = (8, "d") if kind == _REALSXP else (4, "i")
            values = list(struct.unpack(f">{n}{code}", self.take(n * width)))
            self._skip_attributes(flags, symbols)
            return values
        if kind == _VECSXP:
            values = [self.read_object(symbols) for _ in range(self.int32())]
            if flags & _HAS_ATTR:
                attributes = dict(self.read_object(symbols))
                if "names" in attributes:
                    return dict(zip(attributes["names"], values, strict=True))
            return values
        if kind == _LISTSXP:
            return self._read_pairlist(flags, symbols)
        raise ValueError(f"unsupported R object type {kind} at byte {self.offset}")

    def _read_pairlist(self, flags: int, symbols: list[Any]) -> list[tuple[Any, Any]]:
        items: list[tuple[Any, Any]] = []
        while (flags & 0xFF) != _NILVALUE:
            if flags & _HAS_ATTR:
                self.read_object(symbols)
            tag = self.read_object(symbols) if flags & _HAS_TAG else None
            items.append((tag, self.read_object(symbols)))
            flags = self.int32()
        return items

    def _skip_attributes(self, flags: int, symbols: list[Any]) -> None:
        if flags & _HAS_ATTR:
            self.read_object(symbols)


def unserialize(data: bytes) -> Any:
    """Decode one R object in XDR serialisation format 2 or 3."""
    reader = _XdrReader(data)
    if reader.take(2) != b"X\n":
        raise ValueError("not an XDR-serialised R object (expected the 'X\\n' header)")
    version = reader.int32()
    reader.int32()  # R version that wrote it
    reader.int32()  # oldest R version that can read it
    if version == 3:
        reader.take(reader.int32())  # native encoding name
    return reader.read_object([])


def _decompress_blob(blob: bytes) -> bytes:
    # Each entry is a 4-byte big-endian length followed by a compressed payload; R marks the
    # codec with one byte ('Z' xz, '2' bzip2, '0' none), and plain zlib has no marker at all.
    marker = blob[4:5]
    if marker == b"Z":
        return lzma.decompress(blob[5:])
    if marker == b"2":
        return bz2.decompress(blob[5:])
    if marker == b"0":
        return blob[5:]
    return zlib.decompress(blob[4:])


def read_lazyload_db(prefix: Path) -> dict[str, Any]:
    """Read every variable of an R lazy-load database given its path without the extension."""
    index = unserialize(gzip.decompress(prefix.with_suffix(".rdx").read_bytes()))
    blobs = prefix.with_suffix(".rdb").read_bytes()
    variables: dict[str, Any] = {}
    for name, (offset, length) in index["variables"].items():
        variables[name] = unserialize(_decompress_blob(blobs[offset : offset + length]))
    return variables


def read_novels(package_root: Path) -> dict[str, str]:
    """The six novels as text, keyed as in :data:`NOVEL_KEYS`.

    ``package_root`` is the root of the extracted ``.deb`` (the folder holding ``usr/``).
    """
    prefix = package_root / "usr/lib/R/site-library/janeaustenr/data/Rdata"
    if not prefix.with_suffix(".rdx").is_file():
        raise FileNotFoundError(
            f"no janeaustenr data at {prefix}.rdx; extract the package first with "
            "`apt-get download r-cran-janeaustenr && dpkg-deb -x r-cran-janeaustenr_*.deb DIR`"
        )
    variables = read_lazyload_db(prefix)
    missing = [key for key in NOVEL_KEYS if key not in variables]
    if missing:
        raise ValueError(f"janeaustenr data lacks the novels {missing}; found {sorted(variables)}")
    return {key: "\n".join(line or "" for line in variables[key]) for key in NOVEL_KEYS}
