"""fastmail: a complete, fast mail server."""

__version__ = "0.1.0"
