r"""SemPPL train-step time vs the same network and views with an NT-Xent-only loss.

SemPPL App. F: the queue, the k-NN and the semantic-positive loss terms cost
8.5% of the step over RELICv2 (R50 on TPU). Here, in one run on this machine,
three variants of the same jitted train step (same encoder, projector,
predictor, views, batch, optimizer and EMA target):
  semppl        the full method (queue push, 16/4-vote k-NN, P semantic
                positives, Eq. 10 loss);
  semppl P=0    the same with no semantic positives (RELICv2's loss; queue and
                k-NN still run for the telemetry);
  nt_xent only  no queue, no k-NN, no semantic positives: NT-Xent between
                every anchor view and every other large view's target.

  python experiments/benchmark_semppl.py [--config=configs/semppl_fmnist.py:large=4,small=2]
      [--steps=20] [--write]
The default config is the Fashion-MNIST one with the paper's view structure
(4 large + 2 small views, 16 votes).
"""
import argparse
import copy
import importlib.util
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments import bench_utils  # noqa: E402
from semissl import losses  # noqa: E402
from semissl.methods import base, semppl  # noqa: E402
from semissl.training import setup, sharding  # noqa: E402

SECTION_TITLE = "SemPPL step overhead (queue, k-NN, semantic positives)"
NUM_CLASSES = 10


class NtXentOnly(semppl.SemPPL):
  """The SemPPL network and views with NT-Xent between view pairs only."""

  name = "semppl_nt_xent_baseline"

  def loss_fn(self, params, batch, *, state, rng):
    del rng
    online, target, batch_stats, _ = self.forward(params, batch, state=state)
    pair_losses = [
        losses.nt_xent(online[i], target[j], temperature=self.option("temperature"))[0]
        for i in range(online.shape[0]) for j in range(target.shape[0]) if i != j]
    loss = jnp.mean(jnp.stack(pair_losses))
    return loss, base.StepAux(batch_stats, state.method_state, {})


def load_config(spec):
  """'configs/x.py[:variant]' -> its get_config(variant)."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def synthetic_batch(config):
  """Global NumPy batch with every view at its own size."""
  rs = np.random.RandomState(0)
  channels = config.data.get("num_channels") or 1

  def views(spec, n):
    return {name: rs.normal(size=(n, v.get("size") or config.data.image_size,
                                  v.get("size") or config.data.image_size, channels)
                            ).astype(np.float32) for name, v in spec.items()}

  labelled, unlabelled = config.batch_size, int(config.mu * config.batch_size)
  return {
      "labelled": {"images": views(config.data.labelled_views, labelled),
                   "label": rs.randint(0, NUM_CLASSES, labelled).astype(np.int32),
                   "id": np.arange(labelled, dtype=np.int64),
                   "index": np.arange(labelled, dtype=np.int32)},
      "unlabelled": {"images": views(config.data.unlabelled_views, unlabelled),
                     "true_label": rs.randint(0, NUM_CLASSES, unlabelled).astype(np.int32),
                     "id": np.arange(unlabelled, dtype=np.int64),
                     "index": np.arange(unlabelled, dtype=np.int32)}}


def compiled_step(method_cls, config):
  """Returns a no-argument function running one compiled train step to completion."""
  mesh = setup.make_mesh(config)
  local = synthetic_batch(config)
  info = setup.dataset_info(config, num_classes=NUM_CLASSES, image_shape=(28, 28, 1),
                            num_labelled=600, num_unlabelled=59400)
  batch = sharding.global_batch(local, mesh)
  run = setup.build(config, info, example_batch=batch, mesh=mesh, rng=jax.random.PRNGKey(0),
                    method_cls=method_cls)
  state, train_step = run.state, run.train_step
  compiled = train_step.lower(state, batch).compile()
  holder = {"state": state}

  def one_step():
    holder["state"], metrics = compiled(holder["state"], batch)
    jax.block_until_ready(metrics)

  one_step()  # warm-up
  return one_step


def interleaved_timings(steps_by_name, *, rounds):
  """Wall and process-CPU seconds per step of each function, run round-robin.

  The CPU time of this process (all its threads) hardly changes when other
  jobs compete for the cores; the wall time does.
  """
  wall = {name: [] for name in steps_by_name}
  cpu = {name: [] for name in steps_by_name}
  for _ in range(rounds):
    for name, one_step in steps_by_name.items():
      start_wall, start_cpu = time.perf_counter(), time.process_time()
      one_step()
      wall[name].append(time.perf_counter() - start_wall)
      cpu[name].append(time.process_time() - start_cpu)
  return ({name: np.asarray(v) for name, v in wall.items()},
          {name: np.asarray(v) for name, v in cpu.items()})


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default="configs/semppl_fmnist.py:large=4,small=2")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--write", action="store_true")
  args = parser.parse_args()
  config = load_config(args.config)
  no_positives = copy.deepcopy(config)
  no_positives.method.num_semantic_positives = 0
  steps = {label: compiled_step(cls, cfg)
           for label, cls, cfg in (("semppl", semppl.SemPPL, config),
                                   ("semppl P=0", semppl.SemPPL, no_positives),
                                   ("nt_xent only", NtXentOnly, config))}
  wall, cpu = interleaved_timings(steps, rounds=args.steps)
  rows = []
  for label in steps:
    ratios = cpu[label] / cpu["nt_xent only"]  # per round: same moment, same load
    low, high = np.percentile(ratios, [25, 75])
    rows.append({"variant": label, "wall_ms": f"{1e3 * np.median(wall[label]):.0f}",
                 "cpu_ms": f"{1e3 * np.median(cpu[label]):.0f}",
                 "cpu_vs_nt_xent_only": f"{100 * (np.median(ratios) - 1):+.1f}%",
                 "interquartile": f"{100 * (low - 1):+.1f}% .. {100 * (high - 1):+.1f}%"})
  m = config.method
  shapes = (f"Config `{args.config}`: {config.model.name}, batch {config.batch_size} "
            f"labelled + {int(config.mu * config.batch_size)} unlabelled, "
            f"{len(m.large_views)} large + {len(m.small_views)} small views, queue "
            f"{m.queue_capacity} x {len(m.large_views)} views, D = {m.projection_dim}, "
            f"P = {m.num_semantic_positives}, |N| = {m.num_negatives}, "
            f"{jax.device_count()} {jax.devices()[0].platform} device(s); median of "
            f"{args.steps} rounds after compilation, each round one step of every "
            "variant. wall_ms: median wall time; cpu_ms: median CPU time of this process "
            "(all threads), which other jobs on the machine disturb far less; "
            "cpu_vs_nt_xent_only: median and interquartile range of the per-round CPU "
            "time ratios.")
  body = shapes + "\n\n" + bench_utils.markdown_table(rows)
  body += ("\n\nSemPPL App. F reports 8.5% of the step for the queue, the k-NN and the "
           "extra loss terms over RELICv2 (ResNet-50, TPU). Other jobs share this "
           "machine's 2 cores, so wall times are noisy; compare the CPU-time ratios.")
  print(body)
  if args.write:
    bench_utils.write_section(SECTION_TITLE, body, ["experiments/benchmark_semppl.py",
                                                    *sys.argv[1:]])


if __name__ == "__main__":
  main()
