"""Errors a user can cause, and how the command line reports them.

Library code raises the classes below (or the standard ``FileNotFoundError`` / ``ValueError`` family, which they
extend) with a message that names the problem and the file. ``describe`` turns a known failure into the one line the
CLI prints (``glimpseprune: error: ...``, exit code 2); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path


class GlimpsePruneError(Exception):
    """A failure the user can fix (bad input, bad file, bad option). ``path``: the file at fault, when there is one."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)

    def __str__(self) -> str:
        message = super().__str__()
        if self.path and self.path not in message:
            return f"{message} ({self.path})"
        return message


class UserError(GlimpsePruneError, ValueError):
    """An invalid argument, option or input value."""


class ConfigError(GlimpsePruneError, ValueError):
    """A config, checkpoint or state file whose contents are malformed or do not fit the model."""


class UnsafeFileError(GlimpsePruneError, ValueError):
    """A file that could run code when read (a pickle): refused, never loaded."""


def read_json(path: str | os.PathLike, what: str = "JSON file"):
    """``json.load`` of a file, with a decoding error reported as a ``ConfigError`` naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what} is not UTF-8 text: {err}", path) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{what} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}", path) from None


def _cuda_message(err: BaseException) -> str | None:
    text = str(err)
    if "CUDA" in text or "NVIDIA driver" in text or ("cuda" in text.lower() and "device" in text.lower()):
        return (f"a CUDA device was requested but none is usable here ({text.strip().splitlines()[0]}); "
                "use --device cpu")
    return None


def describe(err: BaseException) -> str | None:
    """The one-line message for a known failure, or None for an unexpected one (a bug: show the traceback)."""
    if isinstance(err, GlimpsePruneError):
        return str(err)
    if isinstance(err, json.JSONDecodeError):  # a JSON text that was not read through read_json
        return f"malformed JSON: {err.msg} at line {err.lineno} column {err.colno}"
    if isinstance(err, pickle.UnpicklingError):
        return f"refused to unpickle a file (it could run code): {str(err).strip().splitlines()[0]}"
    if isinstance(err, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)):
        name = {FileNotFoundError: "not found", NotADirectoryError: "not a directory",
                IsADirectoryError: "is a directory, expected a file", PermissionError: "permission denied",
                FileExistsError: "already exists"}
        if err.filename is not None and err.strerror:
            kind = next((v for k, v in name.items() if isinstance(err, k)), err.strerror)
            return f"{err.filename}: {kind}"
        return str(err)
    if type(err).__name__ == "SafetensorError":  # safetensors' own class; not importable as a stable name
        return f"unreadable safetensors file (truncated or corrupt?): {err}"
    if isinstance(err, (AssertionError, RuntimeError)):
        message = _cuda_message(err)
        if message:
            return message
        if isinstance(err, RuntimeError) and "device string" in str(err):
            return f"invalid --device: {err}"
        return None
    if isinstance(err, (ValueError, OSError)):
        return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return None


def debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """(--debug given anywhere on the line or GLIMPSEPRUNE_DEBUG=1, argv without it)."""
    debug = "--debug" in argv or os.environ.get("GLIMPSEPRUNE_DEBUG", "") not in ("", "0")
    return debug, [a for a in argv if a != "--debug"]


def run_guarded(call, debug: bool = False, prog: str = "glimpseprune") -> int:
    """The CLI's error boundary: ``call()``'s known failures print ``<prog>: error: <problem>`` on stderr and give
    exit code 2 (130 for Ctrl-C); with ``debug`` they raise with their traceback. Unknown exceptions (bugs) always
    keep their traceback."""
    try:
        return int(call() or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as err:  # a subcommand's own "raise SystemExit('message')"
        if isinstance(err.code, str) and not debug:
            print(f"{prog}: error: {err.code.removeprefix('error: ')}", file=sys.stderr)
            return 2
        raise
    except Exception as err:
        message = describe(err)
        if message is None or debug:
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
