"""Output folders: checked before any work, written beside their destination and moved into
place, so a crash never leaves a folder that looks like a finished result, and an existing
result is replaced only when asked (as a whole: nothing of the old one stays beside the new).

Used by every command that writes a folder: ``train`` (an SAE), ``export`` (an SAE) and
``cache`` (an activation cache).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def staging_folder(output: Path) -> Path:
    """Where a run writes before its result moves to ``output``: ``<output>.partial``, a fixed
    name, so an interrupted run can be found and resumed."""
    return output.with_name(output.name + ".partial")


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def check_output_folder(
    output: Path,
    *,
    overwrite: bool,
    marker: str,
    what: str,
    flag: str = "--output",
    source: Path | None = None,
) -> None:
    """Raise (``FileExistsError``, ``NotADirectoryError``, ``PermissionError`` or ``ValueError``,
    each naming the path and the way out) unless ``output`` can take a new ``what``:

    - it is not ``source`` (the command's input) and not inside it;
    - it is not a file, and no folder above it is a file;
    - the nearest existing folder above it is writable;
    - it is new, empty, or (with ``overwrite``) holds a previous ``what`` (the file ``marker``);
      a non-empty folder without ``marker`` is never replaced.
    """
    output = output.expanduser()
    if source is not None:
        resolved, source_resolved = output.resolve(), source.expanduser().resolve()
        if resolved == source_resolved or source_resolved in resolved.parents:
            raise ValueError(
                f"{flag} {output} is the input {source} (or inside it); write elsewhere"
            )
    if output.exists() and not output.is_dir():
        raise FileExistsError(
            f"{flag} {output} exists and is a file; {what} is written as a folder"
        )
    existing = _nearest_existing(output.parent)
    if not existing.is_dir():
        raise NotADirectoryError(f"{flag} {output}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {output}: cannot write in {existing} (permission denied)")
    if output.is_dir() and any(output.iterdir()):
        if not (output / marker).exists():
            raise FileExistsError(
                f"{flag} {output} is a folder that holds files but no {what}; choose an empty or "
                "new folder (--overwrite replaces only a previous result)"
            )
        if not overwrite:
            raise FileExistsError(
                f"{flag} {output} already holds {what}; choose another folder or pass "
                "--overwrite to replace it"
            )


def move_into_place(staging: Path, output: Path) -> None:
    """Make the finished ``staging`` folder ``output``, replacing any previous one whole. The old
    folder is moved aside first and removed last, so at no moment does ``output`` hold a mixture,
    and a failure leaves either the old or the new folder there."""
    output.parent.mkdir(parents=True, exist_ok=True)
    aside = None
    if output.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{output.name}.replaced-", dir=output.parent))
        aside.rmdir()
        output.rename(aside)
    try:
        staging.rename(output)
    except BaseException:
        if aside is not None:
            aside.rename(output)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
