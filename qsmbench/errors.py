"""Exceptions with messages meant for users: each names the file, key or method at fault."""


class QsmbenchError(Exception):
    """Base class; the command line prints these without a traceback and exits non-zero."""


class InputError(QsmbenchError, ValueError):
    """Bad input data: wrong dimensionality, shape mismatch, NaNs, an empty mask, ..."""


class ConfigError(QsmbenchError, ValueError):
    """A configuration file or method parameter that does not validate."""


class MethodError(QsmbenchError):
    """Registry problems: unknown, duplicate or unavailable methods."""


class UnknownMethodError(MethodError, KeyError):
    def __str__(self):  # KeyError quotes its argument; we want the plain sentence
        return str(self.args[0]) if self.args else ""


class MethodUnavailableError(MethodError):
    """A registered method whose requirements are missing."""
