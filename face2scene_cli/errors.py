"""The error family raised at f2s boundaries, and the process exit codes they map to."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes; documented in the README, stable across releases."""

    OK = 0
    FAILED_FILES = 1  # the run finished, some files failed
    USAGE = 2  # bad option, config or input path
    LOCKED = 3  # another run holds the output folder
    NOT_AVAILABLE = 4  # the command (or a backend) is not available in this build
    NO_FACE = 5  # a face-only command found no usable face
    MODEL_INTEGRITY = 6  # a model's files do not match its metadata
    INTERRUPTED = 130  # SIGINT, after the file in flight finished
    TERMINATED = 143  # SIGTERM, after the file in flight finished


class F2SError(Exception):
    """Base class of every error f2s raises on purpose; carries the exit code it maps to."""

    exit_code: ExitCode = ExitCode.FAILED_FILES


class InputError(F2SError):
    """One input file cannot be used (unreadable, not an image, too large, ...)."""


class ImageDecodeError(InputError):
    """The file's bytes are not a decodable image."""


class ImageTooLargeError(InputError):
    """The image claims more pixels than the configured limit (decompression-bomb guard)."""


class ConfigError(F2SError):
    """Invalid configuration: a YAML file, an F2S_* variable or a flag."""

    exit_code = ExitCode.USAGE


class LockError(F2SError):
    """The output folder is locked by another running f2s process."""

    exit_code = ExitCode.LOCKED


class OutputFolderError(F2SError):
    """The output folder cannot be created, locked or written (read-only, full, no access);
    found before any image is processed."""

    exit_code = ExitCode.USAGE


class NotAvailableError(F2SError):
    """A command or backend that this build does not provide (yet)."""

    exit_code = ExitCode.NOT_AVAILABLE


class ModelIntegrityError(F2SError):
    """A model's files are missing or do not match the sha256 in its metadata."""

    exit_code = ExitCode.MODEL_INTEGRITY
