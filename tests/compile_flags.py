"""XLA flags for every test process (conftest.py) and the subprocesses tests start.

The CPU backend without LLVM's optimisation passes: compiling dominates the tests
(tiny models, a few steps each), and the optimisation level changes neither the HLO
(SPMD partitioning, fusion decisions) nor IEEE float semantics, only how fast the
generated loops run. Measured: SemPPL's end-to-end test 77 -> 40 CPU s, tests/losses
149 -> 108 CPU s. tests/methods/test_sharded_step.py did this per jit already.
"""
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def with_fast_compile(xla_flags: str) -> str:
  """`xla_flags` (an XLA_FLAGS value) plus FAST_COMPILE, unless it sets the level."""
  if "xla_backend_optimization_level" in xla_flags:
    return xla_flags
  return f"{xla_flags} {FAST_COMPILE}".strip()
