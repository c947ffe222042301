"""The shell's error families, one flat class per concern (httpcore style).

The core (`reassembly`) never raises on bad traffic: it counts. These errors are for the shell's own
boundaries: bad configuration, an unusable capture source, a failed delivery. Each message is one line
that names the thing at fault (the variable, the file, the endpoint) and what is wrong with it.
"""

from __future__ import annotations

__all__ = ["CaptureError", "ConfigError", "OutputError", "SnifferError", "TransportError"]


class SnifferError(Exception):
    """Base of every error the shell reports to the user."""


class ConfigError(SnifferError):
    """A configuration value is missing, malformed or unknown; the message names the variable or flag."""


class CaptureError(SnifferError):
    """A capture source cannot be opened or read; the message names the file or interface."""


class OutputError(SnifferError):
    """Writing the events out failed (a full disk, an I/O error); the message names the output."""


class TransportError(SnifferError):
    """Delivering events to the collector failed (network, HTTP status); retried by the transport."""
