"""semissl.methods: one file per method (its loss_fn and its state)."""
from semissl.methods import supervised  # noqa: F401  (registers)
from semissl.methods.base import DatasetInfo, Method, StepAux, get_method, known_methods, register

__all__ = ["DatasetInfo", "Method", "StepAux", "get_method", "known_methods", "register"]
