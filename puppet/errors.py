"""User-facing errors: the CLI turns these into one line on stderr and exit code 2."""


class PuppetError(Exception):
    """A mistake in what the user asked for (bad file, no camera, no face, unwritable output)."""

    exit_code = 2


class InputError(PuppetError):
    """The input cannot be opened or decoded (missing, corrupt, truncated, no video stream)."""


class OutputError(PuppetError):
    """The output cannot be written."""


class AssetError(PuppetError):
    """A model or data file is missing, corrupt or foreign."""


def one_line(error: BaseException) -> str:
    """An exception as one short line for an error message (FFmpeg's and the OS's errors without
    their errno and file name; no line breaks)."""
    text = getattr(error, "strerror", None) or str(error)
    return " ".join(str(text).split())
