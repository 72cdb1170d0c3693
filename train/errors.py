"""The error of the export steps.

Its own module because the graph edits, the calibration checks, the TFLite conversion and the
export itself all raise it, and the CLI catches it, without any of them importing another.
"""

from __future__ import annotations


class ExportError(RuntimeError):
    """The model cannot be exported as asked; the message says why and what to change."""
