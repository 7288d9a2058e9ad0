"""TensorFlow set-up for the input pipeline: CPU only, with a bounded thread count.

JAX owns the accelerators; TensorFlow must neither see nor reserve their memory.
"""
from __future__ import annotations

import os

import tensorflow as tf


def configure_tensorflow(*, num_threads: int | None = None) -> None:
  """Hides GPUs/TPUs from TensorFlow and caps its eager thread pools.

  Both settings only take effect before TensorFlow runs its first op; later calls
  keep whatever was fixed then.

  Args:
    num_threads: intra/inter-op threads for eager TF ops (loading, statistics);
      None leaves TF's default.
  """
  for device_type in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], device_type)
    except (RuntimeError, ValueError):
      pass  # Context already initialised, or no such device type.
  if num_threads:
    try:
      tf.config.threading.set_intra_op_parallelism_threads(num_threads)
      tf.config.threading.set_inter_op_parallelism_threads(num_threads)
    except RuntimeError:
      pass  # Context already initialised: thread pools are fixed.


def default_num_threads() -> int:
  """Threads for tf.data: the CPUs this process may use."""
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:
    return max(1, os.cpu_count() or 1)


def dataset_options(*, num_threads: int) -> tf.data.Options:
  """Deterministic tf.data options with a private pool of `num_threads` threads."""
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = num_threads
  options.threading.max_intra_op_parallelism = 1
  options.autotune.enabled = True
  return options
