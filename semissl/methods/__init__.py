"""semissl.methods: one file per method (its loss_fn and its state)."""
from semissl.methods import supervised  # noqa: F401  (registers)
from semissl.methods import simclr, distill  # noqa: F401  (registers)
from semissl.methods import semppl  # noqa: F401  (registers)
from semissl.methods import simmatch, fixmatch  # noqa: F401  (registers)
from semissl.methods import ict, mean_teacher, mixmatch, pi_model  # noqa: F401  (registers)
from semissl.methods import dividemix, label_propagation, meta_pseudo_labels  # noqa: F401  (registers)
from semissl.methods import noisy_student  # noqa: F401  (registers)
from semissl.methods import pseudo_label, temporal_ensembling, uda, vat  # noqa: F401  (registers)
from semissl.methods import remixmatch  # noqa: F401  (registers)
from semissl.methods.base import (DatasetInfo, Method, StepAux, check_option_keys,
                                  get_method, known_methods, register)

__all__ = ["DatasetInfo", "Method", "StepAux", "check_option_keys", "get_method",
           "known_methods", "register"]
