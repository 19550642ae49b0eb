"""qsmbench: comparative benchmarking of QSM dipole inversion methods."""

__version__ = "0.1.0"

__all__ = ["__version__"]
