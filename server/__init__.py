"""A local reference server for the OpenSandbox Lifecycle and execd APIs."""

__version__ = "0.1.0"
