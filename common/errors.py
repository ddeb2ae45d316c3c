"""User-facing errors as one line: the root cause of a failure, naming the file and the problem.

Our readers and checks raise ``ValueError`` subclasses (e.g. :class:`common.io.nifti.ImageReadError`),
``FileNotFoundError`` and friends with messages that name the file. MONAI wraps them on the way out: config
evaluation raises ``RuntimeError("Failed to evaluate ...")`` and transforms raise ``RuntimeError("applying
transform ...")``, each with our error as ``__cause__``; Python then prints a 50-100 line traceback with the useful
line in the middle. :func:`friendly` digs the root cause out of that chain; :func:`install_excepthook` (the first
``run`` expression of every bundle's ``inference.json``, evaluated after MONAI has put the bundle folder on
``sys.path``) makes ``python -m monai.bundle run`` print just that line for those error types. Anything else (a bug) keeps its full traceback, and ``REGISTRATION_TRACEBACK=1`` shows the
full traceback always.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType

__all__ = ["USER_ERRORS", "friendly", "install_excepthook", "root_cause"]

# errors a user's input or setting can cause; their messages name the file or argument
USER_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    ValueError,
    KeyError,
)


def root_cause(exc: BaseException) -> BaseException:
    """The first exception in the ``__cause__`` chain that is not a bare ``RuntimeError`` wrapper."""
    seen: BaseException = exc
    while type(seen) is RuntimeError and seen.__cause__ is not None:
        seen = seen.__cause__
    return seen


def friendly(exc: BaseException) -> str:
    """``"<ErrorType>: <message>"`` of :func:`root_cause`, on one line."""
    seen = root_cause(exc)
    text = " ".join(str(seen).split())
    if isinstance(seen, KeyError) and len(seen.args) == 1 and isinstance(seen.args[0], str):
        text = seen.args[0]
    return f"{type(seen).__name__}: {text}"


def _is_device_error(exc: BaseException) -> bool:
    """torch's own errors for a CUDA device this machine does not have (an AssertionError on CPU-only builds)."""
    text = str(exc)
    return isinstance(exc, (AssertionError, RuntimeError)) and (
        "not compiled with CUDA" in text or "no NVIDIA driver" in text or "CUDA driver" in text
    )


def _hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    cause = root_cause(exc)
    if os.environ.get("REGISTRATION_TRACEBACK") or not (isinstance(cause, USER_ERRORS) or _is_device_error(cause)):
        sys.__excepthook__(kind, exc, tb)
        return
    if _is_device_error(cause):
        print(f"error: device: {cause}; run on the CPU with --device \"$torch.device('cpu')\".", file=sys.stderr)
    else:
        print(f"error: {friendly(exc)}", file=sys.stderr)
    print("(set REGISTRATION_TRACEBACK=1 for the full traceback)", file=sys.stderr)


def install_excepthook() -> bool:
    """Print user errors that reach the top level as one line (module docstring); returns True."""
    sys.excepthook = _hook
    return True
