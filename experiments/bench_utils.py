"""Shared measuring code for the benchmarks in experiments/ (not a library module)."""
from __future__ import annotations

import os
import re
import statistics
import sys
import time

import numpy as np

_DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "s8": 1, "u8": 1,
                "pred": 1, "f64": 8, "s64": 8}
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
                "collective-permute")


def set_simulated_devices_from_argv() -> None:
  """Honours --devices=N before jax initialises (simulated CPU devices)."""
  for arg in sys.argv:
    if arg.startswith("--devices=") and int(arg.split("=")[1]) > 0:
      n = arg.split("=")[1]
      os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                 f" --xla_force_host_platform_device_count={n}")
      os.environ["JAX_NUM_CPU_DEVICES"] = n


def define_config_flag():
  from ml_collections import config_flags
  return config_flags.DEFINE_config_file("config", None, "Experiment config.", lock_config=False)


def _collective_results(hlo_text: str):
  """(kind, 'dtype[dims]', bytes) of each result of each collective in an HLO module."""
  pattern = re.compile(r"=\s*(\(.*?\)|\S+)\s+(" + "|".join(_COLLECTIVES) + r")(-start)?\(")
  for line in hlo_text.splitlines():
    match = pattern.search(line)
    if not match:
      continue
    for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", match.group(1)):
      size = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
      yield match.group(2), f"{dtype}[{dims}]", size * _DTYPE_BYTES.get(dtype, 4)


def collective_bytes(hlo_text: str) -> dict[str, int]:
  """Bytes of the results of each collective op kind in an HLO module's text."""
  totals = {name: 0 for name in _COLLECTIVES}
  for kind, _, size in _collective_results(hlo_text):
    totals[kind] += size
  return totals


def largest_collectives(hlo_text: str, top: int = 3) -> list[str]:
  """The `top` largest collective results of an HLO module: 'kind dtype[shape]'."""
  found = sorted(((size, f"{kind} {shape}") for kind, shape, size in
                  _collective_results(hlo_text)), reverse=True)
  return [name for _, name in found[:top]]


def measure_matmul_peak(n: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of a float32 [n,n]x[n,n] matmul on the default device (best of repeats)."""
  import jax
  import jax.numpy as jnp
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = min(_time_call(lambda: f(a).block_until_ready()) for _ in range(repeats))
  return 2 * n ** 3 / best


def _time_call(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def median_time(fn, steps: int) -> float:
  return statistics.median(_time_call(fn) for _ in range(steps))


def synthetic_batch(config, num_classes: int):
  """A batch with the config's views and sizes (global), NumPy."""
  rs = np.random.RandomState(0)
  size = config.data.image_size
  channels = config.data.get("num_channels") or 1
  def views(names, n):
    return {name: rs.normal(size=(n, size, size, channels)).astype(np.float32) for name in names}
  batch = {"labelled": {"images": views(config.data.labelled_views, config.batch_size),
                        "label": rs.randint(0, num_classes, config.batch_size).astype(np.int32),
                        "id": np.arange(config.batch_size, dtype=np.int64),
                        "index": np.arange(config.batch_size, dtype=np.int32)}}
  if config.get("mu", 0) and config.data.get("unlabelled_views"):
    n = int(config.mu * config.batch_size)
    batch["unlabelled"] = {"images": views(config.data.unlabelled_views, n),
                           "id": np.arange(n, dtype=np.int64),
                           "index": np.arange(n, dtype=np.int32),
                           "true_label": rs.randint(0, num_classes, n).astype(np.int32)}
  return batch


def benchmark_train_step(config, *, steps: int, num_classes: int) -> dict:
  import jax
  from semissl.training import setup, sharding

  mesh = setup.make_mesh(config)
  local = synthetic_batch(config, num_classes)
  n_images = sum(v.shape[0] for part in local.values() for v in part["images"].values())
  info = setup.dataset_info(
      config, num_classes=num_classes,
      image_shape=local["labelled"]["images"][next(iter(local["labelled"]["images"]))].shape[1:],
      num_labelled=10 * config.batch_size,
      num_unlabelled=10 * int(config.get("mu", 0) * config.batch_size))
  batch = sharding.global_batch(local, mesh)
  run = setup.build(config, info, example_batch=batch, mesh=mesh, rng=jax.random.PRNGKey(0))
  state, train_step = run.state, run.train_step
  compiled = train_step.lower(state, batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # XLA's cost analysis of an SPMD-partitioned program counts one device's share.
  flops = float(cost.get("flops", 0.0)) * jax.device_count() if cost else 0.0
  memory = compiled.memory_analysis()
  collectives = collective_bytes(compiled.as_text())
  grad_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.params))

  holder = {"state": state}
  def one_step():
    holder["state"], metrics = compiled(holder["state"], batch)
    jax.block_until_ready(metrics)
  one_step()  # warm-up
  step_time = median_time(one_step, steps)
  peak = measure_matmul_peak()
  mem_bytes = 0
  if memory is not None:
    mem_bytes = (memory.temp_size_in_bytes + memory.argument_size_in_bytes +
                 memory.output_size_in_bytes - memory.alias_size_in_bytes)
  return {
      "config": f"{config.method.name}/{config.model.name} B={config.batch_size} "
                f"mu={config.get('mu', 0)} img={config.data.image_size}",
      "devices": jax.device_count(),
      "step_ms": 1e3 * step_time,
      "images_per_s": n_images / step_time,
      "gflop_per_step": flops / 1e9,
      "achieved_gflops": flops / step_time / 1e9,
      "matmul_peak_gflops": peak / 1e9,
      "fraction_of_peak": flops / step_time / peak,
      "compiled_memory_mb_per_device": mem_bytes / 2 ** 20,
      "allreduce_mb": collectives["all-reduce"] / 2 ** 20,
      "allgather_mb": collectives["all-gather"] / 2 ** 20,
      "reducescatter_mb": collectives["reduce-scatter"] / 2 ** 20,
      "gradient_mb": grad_bytes / 2 ** 20,
  }


def remat_probe(layers: int = 20, width: int = 512, rows: int = 4096) -> dict[str, float]:
  """Temporary MiB of the compiled gradient of a `layers`-deep tanh MLP on [rows, width],
  plain and with jax.checkpoint around every layer. Each layer keeps two [rows, width]
  float32 activations, so plain backprop holds about 2 * layers of them and per-layer
  remat about `layers` (the layers' inputs) plus one layer's recomputation."""
  import jax
  import jax.numpy as jnp

  def layer(w, x):
    return jnp.tanh(jnp.tanh(x @ w) @ w)

  result = {"activation MiB (one)": rows * width * 4 / 2 ** 20}
  for name, fn in (("plain", layer), ("remat", jax.checkpoint(layer))):
    def loss(ws, x, fn=fn):
      for w in ws:
        x = fn(w, x)
      return jnp.sum(x * x)
    ws = [jax.ShapeDtypeStruct((width, width), jnp.float32)] * layers
    x = jax.ShapeDtypeStruct((rows, width), jnp.float32)
    compiled = jax.jit(jax.grad(loss)).lower(ws, x).compile()
    result[f"{name} temp MiB"] = compiled.memory_analysis().temp_size_in_bytes / 2 ** 20
  return result


def record_convs(config, images):
  """[(name, conv module (unbound), input shape)] in call order."""
  import flax.linen as nn
  import jax
  from semissl.methods import networks

  backbone = networks.build_backbone(config.model)
  calls = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Conv) and context.method_name == "__call__":
      calls.append(("/".join(context.module.path), context.module.clone(parent=None),
                    args[0].shape))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda x: backbone.init(jax.random.PRNGKey(0), x, train=True), images)
  return calls


def patches_conv(conv, kernel, x):
  """`conv` (an nn.Conv without bias) applied to x as im2col: XLA's patch extraction
  (lax.conv_general_dilated_patches) and one dot."""
  import jax

  kh, kw, cin, cout = kernel.shape
  strides = conv.strides if isinstance(conv.strides, tuple) else (conv.strides or 1,) * 2
  padding = conv.padding
  if isinstance(padding, int):
    padding = ((padding, padding),) * 2
  patches = jax.lax.conv_general_dilated_patches(  # channels ordered (cin, kh, kw)
      x, (kh, kw), strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return patches @ kernel.transpose(2, 0, 1, 3).reshape(cin * kh * kw, cout)


def markdown_table(rows: list[dict]) -> str:
  keys = list(rows[0])
  fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
  lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
  lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
  return "\n".join(lines)


def write_section(title: str, body: str, argv: list[str],
                  path: str = os.path.join("docs", "PERFORMANCE.md")) -> None:
  """Replaces (or appends) the '## title' section of docs/PERFORMANCE.md."""
  import platform
  command = "python " + " ".join(argv)
  section = (f"## {title}\n\nMeasured with `{command}` on {platform.machine()} "
             f"({os.cpu_count()} CPU cores, shared machine).\n\n{body}\n")
  text = open(path).read() if os.path.exists(path) else "# Performance\n\n"
  pattern = re.compile(r"^## " + re.escape(title) + r"\n.*?(?=^## |\Z)", re.S | re.M)
  text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else (
      text.rstrip("\n") + "\n\n" + section)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)
