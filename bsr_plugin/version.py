"""The package version (one place; setup metadata and packed files read it here)."""

__version__ = "0.3.0"
