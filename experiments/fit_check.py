"""Does a paper config fit its hardware? Compiles the train step, measures nothing run.

  python experiments/fit_check.py --config=configs/semppl_r50.py --devices=64
  python experiments/fit_check.py --all --write      # every paper config -> PERFORMANCE.md

The train step of `--config` is lowered and compiled for the config's global batch
on `--devices` simulated CPU devices from abstract inputs (jax.ShapeDtypeStruct
with shardings: no data, no real arrays; the state's shapes come from
jax.eval_shape). XLA's analyses of the compiled SPMD program then give, per
device: argument, output and temporary bytes; FLOPs per image; and the bytes of
each collective against the gradient bytes. The verdict compares the per-device
total with the memory of the paper's device.

CPU memory analysis approximates TPU / GPU memory: XLA's CPU compiler upcasts
bfloat16 convolutions to float32 and fuses and schedules differently, so the
temporaries here are an estimate (usually an over-estimate for bfloat16 models),
not the device's number. A config that fits with a wide margin fits; one near
the limit needs a check on the device.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import bench_utils  # noqa: E402

bench_utils.set_simulated_devices_from_argv()

from absl import app, flags  # noqa: E402

# config file -> (devices, device, memory GiB per device): each paper's own hardware.
PAPER_HARDWARE = {
    "configs/semppl_r50.py": (64, "TPU v3 core", 16),  # SemPPL App. F: 13 h on 64 cores
    "configs/simclrv2_r50.py": (128, "TPU v3 core", 16),  # SimCLRv2 §4: 128 Cloud TPUs
    "configs/simmatch_r50.py": (8, "V100 32 GB", 32),  # SimMatch Table 4: 8 V100s
    "configs/semivit_vitb.py": (8, "V100 32 GB", 32),  # Semi-ViT: V100s of 32G, 8 for B
    "configs/supervised_r50.py": (8, "V100 32 GB", 32),  # the label-only baseline
}
IMAGENET_CLASSES, IMAGENET_TRAIN = 1000, 1281167

_CONFIG = bench_utils.define_config_flag()
_DEVICES = flags.DEFINE_integer("devices", 0, "Simulated devices (0: the paper's count).")
_ALL = flags.DEFINE_bool("all", False, "Every paper config, each on its paper's hardware "
                         "(one subprocess each).")
_WRITE = flags.DEFINE_bool("write", False, "Write the table to docs/PERFORMANCE.md.")
_MEMORY = flags.DEFINE_float("device_memory_gib", 0.0, "Device memory (0: the paper's).")


def _views(specs, image_size):
  return {name: int((spec or {}).get("size") or image_size) for name, spec in specs.items()}


def abstract_batch(config, mesh, num_classes):
  """The global batch as ShapeDtypeStructs sharded over the data axis."""
  import jax
  import jax.numpy as jnp
  from semissl.training import sharding
  channels = int(config.data.get("num_channels") or 3)
  size = int(config.data.image_size)
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(
      shape, dtype, sharding=sharding.batch_sharding(mesh))
  def stream(views, n, label_key):
    return {"images": {name: spec((n, s, s, channels), jnp.float32)
                       for name, s in _views(views, size).items()},
            label_key: spec((n,), jnp.int32), "index": spec((n,), jnp.int32),
            "id": spec((n,), jnp.int64 if jax.config.jax_enable_x64 else jnp.int32)}
  batch = {}
  labelled = dict(config.data.get("labelled_views") or {})
  if labelled:
    batch["labelled"] = stream(labelled, config.batch_size, "label")
  unlabelled = dict(config.data.get("unlabelled_views") or {})
  if config.get("mu", 0) and unlabelled:
    batch["unlabelled"] = stream(unlabelled, int(config.mu * config.batch_size), "true_label")
  del num_classes
  return batch


def fit_check(config, *, device_memory_gib: float, device: str) -> dict:
  import jax
  import numpy as np
  from semissl.training import setup

  mesh = setup.make_mesh(config)
  batch = abstract_batch(config, mesh, IMAGENET_CLASSES)
  images = sum(v.shape[0] for part in batch.values() for v in part["images"].values())
  fraction = float(config.data.get("label_fraction") or 1.0)
  num_labelled = int(round(fraction * IMAGENET_TRAIN))
  info = setup.dataset_info(
      config, num_classes=IMAGENET_CLASSES,
      image_shape=(config.data.image_size, config.data.image_size, 3),
      num_labelled=num_labelled, num_unlabelled=IMAGENET_TRAIN,
      labelled_labels=(np.arange(num_labelled) % IMAGENET_CLASSES).astype(np.int32))
  # Only traced: shapes and shardings, no arrays.
  run = setup.build(config, info, example_batch=batch, mesh=mesh, rng=jax.random.PRNGKey(0),
                    abstract=True)
  state, train_step, shapes = run.state, run.train_step, run.state
  compiled = train_step.lower(state, batch).compile()
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float((cost or {}).get("flops", 0.0)) * jax.device_count()  # one device's share
  collectives = bench_utils.collective_bytes(compiled.as_text())
  grad_bytes = sum(int(np.prod(x.shape)) * 4 for x in jax.tree.leaves(shapes.params))
  gib = lambda b: b / 2 ** 30
  total_bytes = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                 - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
  fits = gib(total_bytes) <= device_memory_gib
  return {
      "config": f"{config.method.name}/{config.model.name} {config.model.get('dtype')}",
      "global batch (images)": f"B={config.batch_size} mu={config.get('mu', 0)} ({images})",
      "devices": f"{jax.device_count()} x {device}",
      "args GiB/dev": gib(memory.argument_size_in_bytes),
      "temp GiB/dev": gib(memory.temp_size_in_bytes),
      "total GiB/dev": gib(total_bytes),
      "device GiB": device_memory_gib,
      "verdict": "fits" if fits else "does not fit",
      "GFLOP/image": flops / images / 1e9,
      "collective MiB/dev": sum(collectives.values()) / 2 ** 20,
      "by kind MiB": ", ".join(f"{k} {v / 2 ** 20:.0f}" for k, v in collectives.items() if v),
      "largest": "; ".join(bench_utils.largest_collectives(compiled.as_text())),
      "gradient MiB": grad_bytes / 2 ** 20,
  }


def _subprocess_rows():
  import json
  import subprocess
  rows = []
  for path, (devices, _, _) in PAPER_HARDWARE.items():
    out = subprocess.run([sys.executable, os.path.abspath(__file__), f"--config={path}",
                          f"--devices={devices}", "--json"], capture_output=True, text=True,
                         check=False)
    if out.returncode:
      raise RuntimeError(f"{path}: {out.stderr.strip().splitlines()[-1:]}")
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
  return rows


_JSON = flags.DEFINE_bool("json", False, "Print one JSON line (used by --all).")
_REMAT_PROBE = flags.DEFINE_bool(
    "remat_probe", False, "Print XLA's temporaries for a 20-layer MLP with and without "
    "jax.checkpoint per layer on this backend (does its memory analysis see remat?).")



ADVICE = ("When a config does not fit: compute in bfloat16 (`config.model.dtype`), "
          "accumulate gradients over smaller batches, or spread the batch over more "
          "devices; the biggest temporaries are the activations kept for the backward "
          "pass.")


def main(argv):
  del argv
  import json
  if _REMAT_PROBE.value:
    print(json.dumps(bench_utils.remat_probe()))
    return
  if _ALL.value:
    rows = _subprocess_rows()
  else:
    config_path = flags.FLAGS["config"].config_filename.split(":")[0]
    devices, device, memory = PAPER_HARDWARE.get(config_path, (0, "device", 16))
    import jax
    if _DEVICES.value == 0 and devices and jax.device_count() != devices:
      raise app.UsageError(f"pass --devices={devices} (the paper's hardware) or another count")
    rows = [fit_check(_CONFIG.value, device_memory_gib=_MEMORY.value or memory, device=device)]
  if _JSON.value:
    print(json.dumps(rows[0]))
    return
  table = bench_utils.markdown_table(rows)
  print(table)
  if _WRITE.value:
    bench_utils.write_section(
        "Fit at paper scale (compiled on simulated CPU devices)",
        "Each paper config's train step compiled for its global batch on its paper's device "
        "count, from abstract inputs; memory per device from XLA's CPU memory analysis, "
        "which approximates TPU / GPU memory (the CPU compiler upcasts bfloat16 "
        "convolutions to float32 and fuses differently: treat the numbers as estimates, "
        "re-check configs near the limit on the device).\n\n" + table + "\n\n" + ADVICE,
        sys.argv)


if __name__ == "__main__":
  app.run(main)
