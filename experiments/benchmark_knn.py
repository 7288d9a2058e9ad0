r"""Benchmark of SemPPL's k-NN pseudo-labels (losses.knn_pseudo_labels).

SemPPL's shapes scaled to this machine: B queries per view, a queue of C = 20 B
slots per view (Appendix D.1), D = 256, V = 4 large views, i.e. V * V = 16
(queue view, query view) pairs, k = 1. The queue is placed on one device, and
sharded on its slot axis over all devices (on CPU: simulated devices, set before
jax starts).

Reports the median wall time after compilation, the achieved FLOP/s counting
the similarity matmuls only (2 V V B C D), the same for one big jnp.dot of equal
FLOPs measured in the same run (the "peak"), and whether the compiled HLO
all-gathers anything with the queue's slot axis (the queue itself, or a [B, C]
similarity block). With --write it replaces the k-NN section of
docs/PERFORMANCE.md.

  python experiments/benchmark_knn.py [--batch 256] [--write]
"""

import argparse
import os
import pathlib
import platform
import re
import statistics
import time

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec  # noqa: E402
import numpy as np  # noqa: E402

from semissl.losses import knn_pseudo_labels  # noqa: E402

SECTION_TITLE = "## k-NN pseudo-labels (semissl.losses.knn_pseudo_labels)"
PERFORMANCE_DOC = (
    pathlib.Path(__file__).resolve().parents[1] / "docs" / ("PERFORMANCE.md")
)
_ALL_GATHER = re.compile(r"=\s*(\w+)\[([\d,]*)\][^=]*?\sall-gather(?:-done)?\(")


def median_seconds(fn, *args, repeats):
  """Median wall time of fn(*args) over `repeats` calls after a warm-up."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def all_gather_shapes(hlo_text):
  """Result shapes of every all-gather in compiled HLO text."""
  return [
      tuple(int(d) for d in dims.split(",") if d)
      for _, dims in _ALL_GATHER.findall(hlo_text)
  ]


def run(batch, views, dim, k, num_classes, repeats):
  """Times the k-NN on 1 device and sharded over all devices; returns rows."""
  capacity = 20 * batch
  rng = np.random.default_rng(0)
  queries = rng.normal(size=(views, batch, dim)).astype(np.float32)
  queue = rng.normal(size=(views, capacity, dim)).astype(np.float32)
  labels = rng.integers(0, num_classes, size=(views, capacity)).astype(np.int32)
  flops = 2 * views * views * batch * capacity * dim

  def knn(q, e, y):
    return knn_pseudo_labels(
        queries=q,
        queue_embeddings=e,
        queue_labels=y,
        num_classes=num_classes,
        k=k,
    )

  # Matmul peak: one dot with the same FLOPs, [V B, D] x [D, V C], one device.
  x = jnp.asarray(rng.normal(size=(views * batch, dim)).astype(np.float32))
  y = jnp.asarray(rng.normal(size=(dim, views * capacity)).astype(np.float32))
  peak = flops / median_seconds(jax.jit(jnp.dot), x, y, repeats=repeats)

  rows = []
  single_fn = jax.jit(knn)
  args = [jnp.asarray(a) for a in (queries, queue, labels)]
  single_seconds = median_seconds(single_fn, *args, repeats=repeats)
  single_labels = np.asarray(single_fn(*args)[0])
  rows.append(dict(devices=1, seconds=single_seconds, gathers=[], agree=True))

  num_devices = jax.device_count()
  if num_devices > 1:
    mesh = jax.make_mesh(
        (num_devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,)
    )
    slots = NamedSharding(mesh, PartitionSpec(None, "data"))
    sharded_fn = jax.jit(knn, in_shardings=(slots, slots, slots))
    sharded_args = [jax.device_put(a, slots) for a in (queries, queue, labels)]
    hlo = sharded_fn.lower(*sharded_args).compile().as_text()
    rows.append(
        dict(
            devices=num_devices,
            seconds=median_seconds(sharded_fn, *sharded_args, repeats=repeats),
            gathers=all_gather_shapes(hlo),
            agree=bool(
                np.array_equal(
                    np.asarray(sharded_fn(*sharded_args)[0]), single_labels
                )
            ),
        )
    )
  for row in rows:
    row["gflops"] = flops / row["seconds"] / 1e9
    row["peak_fraction"] = flops / row["seconds"] / peak
    row["queue_gathered"] = any(
        capacity in shape or views * capacity in shape
        for shape in row["gathers"]
    )
  setup = dict(
      batch=batch,
      capacity=capacity,
      dim=dim,
      views=views,
      k=k,
      flops=flops,
      peak_gflops=peak / 1e9,
      backend=jax.default_backend(),
      num_devices=num_devices,
      device_kind=jax.devices()[0].device_kind,
      cpus=os.cpu_count(),
      machine=platform.machine(),
  )
  return setup, rows


def markdown(setup, rows):
  """The results as a markdown section body."""
  lines = [
      f"Shapes: B = {setup['batch']} queries per view, C = 20 B = "
      f"{setup['capacity']} slots per view, D = {setup['dim']}, "
      f"V = {setup['views']} views ({setup['views'] ** 2} pairs), "
      f"k = {setup['k']}; {setup['flops'] / 1e9:.2f} GFLOP of similarity "
      "matmuls per call.",
      f"Machine: {setup['backend']} ({setup['device_kind']}), "
      f"{setup['num_devices']} devices, {setup['cpus']} CPU cores "
      f"({setup['machine']}). Matmul peak (one jnp.dot of equal FLOPs, one "
      f"device): {setup['peak_gflops']:.1f} GFLOP/s.",
      "",
      "| queue placement | median ms | GFLOP/s | % of matmul peak | "
      "all-gather of slot axis in HLO | labels equal 1-device |",
      "|---|---|---|---|---|---|",
  ]
  for row in rows:
    placement = (
        "1 device"
        if row["devices"] == 1
        else f"sharded on C over {row['devices']} devices"
    )
    gathered = (
        "n/a"
        if row["devices"] == 1
        else ("YES" if row["queue_gathered"] else "no")
    )
    lines.append(
        f"| {placement} | {row['seconds'] * 1e3:.1f} | {row['gflops']:.1f} | "
        f"{100 * row['peak_fraction']:.0f}% | {gathered} | "
        f"{'yes' if row['agree'] else 'NO'} |"
    )
  sharded = [row for row in rows if row["devices"] > 1]
  if sharded:
    shapes = ", ".join(
        "[" + ",".join(map(str, shape)) + "]"
        for shape in sorted(set(sharded[0]["gathers"]))
    )
    verdict = (
        "the queue's slot axis IS gathered"
        if sharded[0]["queue_gathered"]
        else "queries and per-device arg-max candidates; none carries "
        "the slot axis"
    )
    lines += [
        "",
        f"All-gathers in the sharded HLO (result shapes): {shapes} "
        f"({verdict}).",
    ]
  lines += [
      "",
      "Simulated CPU devices share the same cores, so the sharded row "
      "measures overhead, not speed-up. Regenerate with "
      "`python experiments/benchmark_knn.py --write`.",
  ]
  return "\n".join(lines)


def write_section(body):
  """Replaces (or appends) the k-NN section of docs/PERFORMANCE.md."""
  section = f"{SECTION_TITLE}\n\n{body}\n"
  text = (
      PERFORMANCE_DOC.read_text()
      if PERFORMANCE_DOC.exists()
      else "# Performance\n"
  )
  start = text.find(SECTION_TITLE)
  if start < 0:
    text = text.rstrip("\n") + "\n\n" + section
  else:
    end = text.find("\n## ", start + len(SECTION_TITLE))
    rest = "" if end < 0 else "\n" + text[end + 1 :]
    text = text[:start] + section + rest
  PERFORMANCE_DOC.parent.mkdir(parents=True, exist_ok=True)
  PERFORMANCE_DOC.write_text(text)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--views", type=int, default=4)
  parser.add_argument("--dim", type=int, default=256)
  parser.add_argument("--k", type=int, default=1)
  parser.add_argument("--num_classes", type=int, default=1000)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument(
      "--write",
      action="store_true",
      help="update the section in docs/PERFORMANCE.md",
  )
  args = parser.parse_args()
  setup, rows = run(
      args.batch, args.views, args.dim, args.k, args.num_classes, args.repeats
  )
  body = markdown(setup, rows)
  print(f"{SECTION_TITLE}\n\n{body}")
  if args.write:
    write_section(body)
    print(f"\nwrote {PERFORMANCE_DOC}")


if __name__ == "__main__":
  main()
