"""Where the train step's time goes: each convolution of the backbone timed alone.

  python experiments/benchmark_layers.py --config=configs/supervised_fmnist.py [--write]

The backbone of the config is run once on the step's images (all views of a synthetic
batch, as the step concatenates them) to record every nn.Conv call (input shape and
the module). Each conv is then compiled and timed alone, forward plus backward (the
gradient of the kernel, and of the input except for the stem, whose input is the
image), and its FLOP/s is set against a matmul peak measured in the same run, next to
the FLOP/s of one matmul of the conv's im2col shape (is it the shape or the conv
kernel that is slow?) and the time of the conv written as that im2col (XLA's patch
extraction and one dot, forward plus backward). The
whole train step (experiments/benchmark.py's measurement) is timed in the same run,
so the rest of the step (batch norm, activations, pooling, loss, optimizer, EMA) is
the step minus the convolutions. One device.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import bench_utils  # noqa: E402

from absl import app, flags  # noqa: E402

_CONFIG = bench_utils.define_config_flag()
_STEPS = flags.DEFINE_integer("steps", 10, "Timed calls after compile (median).")
_WRITE = flags.DEFINE_bool("write", False, "Write the table into docs/PERFORMANCE.md.")


def time_conv(conv, shape, *, input_grad: bool, steps: int):
  """(GFLOP, seconds) of forward + backward of one conv at its input shape."""
  import jax
  import jax.numpy as jnp

  x = jnp.ones(shape, jnp.float32)
  params = conv.init(jax.random.PRNGKey(0), x)

  def loss(params, x):  # quadratic, so the backward pass needs the forward's output
    y = conv.apply(params, x)
    return 0.5 * jnp.vdot(y, y)

  grad = jax.jit(jax.grad(loss, argnums=(0, 1) if input_grad else 0))
  compiled = grad.lower(params, x).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  run = lambda: jax.block_until_ready(compiled(params, x))
  run()
  return float(cost.get("flops", 0.0)) / 1e9, bench_utils.median_time(run, steps)


def time_patches_conv(conv, shape, *, input_grad: bool, steps: int) -> float:
  """Seconds of forward + backward of the same conv written as im2col (`patches_conv`)."""
  import jax
  import jax.numpy as jnp

  x = jnp.ones(shape, jnp.float32)
  kernel = conv.init(jax.random.PRNGKey(0), x)["params"]["kernel"]

  def loss(kernel, x):
    y = bench_utils.patches_conv(conv, kernel, x)
    return 0.5 * jnp.vdot(y, y)

  grad = jax.jit(jax.grad(loss, argnums=(0, 1) if input_grad else 0))
  compiled = grad.lower(kernel, x).compile()
  run = lambda: jax.block_until_ready(compiled(kernel, x))
  run()
  return bench_utils.median_time(run, steps)


def time_im2col_matmul(conv, shape, output_shape, *, steps: int) -> float:
  """FLOP/s of one float32 matmul of the conv's im2col shape: [B Ho Wo, kh kw Cin] x
  [kh kw Cin, Cout] (the same arithmetic as the conv's forward, as one dot)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  rows = int(np.prod(output_shape[:-1]))
  depth = int(np.prod(conv.kernel_size)) * shape[-1]
  a = jnp.ones((rows, depth), jnp.float32)
  b = jnp.ones((depth, conv.features), jnp.float32)
  dot = jax.jit(jnp.dot).lower(a, b).compile()
  run = lambda: dot(a, b).block_until_ready()
  run()
  return 2 * rows * depth * conv.features / bench_utils.median_time(run, steps)


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np

  config = _CONFIG.value
  batch = bench_utils.synthetic_batch(config, num_classes=10)
  images = np.concatenate([v for part in batch.values() for v in part["images"].values()])
  step = bench_utils.benchmark_train_step(config, steps=_STEPS.value, num_classes=10)
  peak = step["matmul_peak_gflops"]
  rows, conv_seconds, conv_gflop = [], 0.0, 0.0
  for index, (name, conv, shape) in enumerate(bench_utils.record_convs(config, images)):
    gflop, seconds = time_conv(conv, shape, input_grad=index > 0, steps=_STEPS.value)
    output_shape = jax.eval_shape(
        lambda x: conv.apply(conv.init(jax.random.PRNGKey(0), x), x),
        jax.ShapeDtypeStruct(shape, jnp.float32)).shape
    im2col = time_im2col_matmul(conv, shape, output_shape, steps=_STEPS.value)
    patches = time_patches_conv(conv, shape, input_grad=index > 0, steps=_STEPS.value)
    conv_seconds, conv_gflop = conv_seconds + seconds, conv_gflop + gflop
    rows.append({"conv": name, "input": "x".join(map(str, shape)),
                 "out_channels": conv.features, "kernel": "x".join(map(str, conv.kernel_size)),
                 "gflop_fwd_bwd": gflop, "ms": 1e3 * seconds,
                 "fraction_of_peak": gflop / seconds / peak,
                 "im2col_matmul_fraction": im2col / 1e9 / peak,
                 "as_patches_ms": 1e3 * patches})
  step_seconds = step["step_ms"] / 1e3
  rows.append({"conv": "all convs", "input": f"{len(images)} images", "out_channels": "",
               "kernel": "", "gflop_fwd_bwd": conv_gflop, "ms": 1e3 * conv_seconds,
               "fraction_of_peak": conv_gflop / conv_seconds / peak,
               "im2col_matmul_fraction": "",
               "as_patches_ms": ""})
  rows.append({"conv": "whole train step", "input": "", "out_channels": "", "kernel": "",
               "gflop_fwd_bwd": step["gflop_per_step"], "ms": step["step_ms"],
               "fraction_of_peak": step["fraction_of_peak"], "im2col_matmul_fraction": "",
               "as_patches_ms": ""})
  rows.append({"conv": "rest of the step (step - convs)", "input": "", "out_channels": "",
               "kernel": "", "gflop_fwd_bwd": step["gflop_per_step"] - conv_gflop,
               "ms": 1e3 * (step_seconds - conv_seconds), "fraction_of_peak": "",
               "im2col_matmul_fraction": "",
               "as_patches_ms": ""})
  table = bench_utils.markdown_table(rows)
  summary = (f"Matmul peak {peak:.0f} GFLOP/s; the convolutions are "
             f"{100 * conv_gflop / step['gflop_per_step']:.0f}% of the step's FLOPs and "
             f"{100 * conv_seconds / step_seconds:.0f}% of its time.")
  print(table + "\n\n" + summary)
  if _WRITE.value:
    bench_utils.write_section(f"Where the step's time goes: {step['config']}",
                              table + "\n\n" + summary, sys.argv)


if __name__ == "__main__":
  app.run(main)
