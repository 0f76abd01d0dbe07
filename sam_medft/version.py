"""The package version, in a module of its own: `sam_medft.__version__` is this value, and
modules that record it (run markers, adapter metadata, eval summaries) import it from here,
not from the package's `__init__` (whose `load`/`train` reach the top layers)."""

__version__ = "0.1.0"  # the same as pyproject.toml's [project] version
