"""The HLO collective accounting that experiments/benchmark.py and fit_check.py print."""
from experiments import bench_utils

HLO = """%a = f32[8,4]{1,0} all-reduce(f32[8,4]{1,0} %x), replica_groups={}
%b = (f32[2,3]{1,0}, bf16[4]{0}) all-gather-start(f32[1,3]{1,0} %y, bf16[2]{0} %w)
%c = f32[1]{0} add(f32[1]{0} %z, f32[1]{0} %z)
%d = s32[10]{0} collective-permute(s32[10]{0} %v)
"""


def test_collective_bytes_and_largest():
  totals = bench_utils.collective_bytes(HLO)
  # 8*4 float32 = 128 B; 2*3 float32 + 4 bfloat16 = 24 + 8 B; 10 int32 = 40 B.
  assert totals == {"all-reduce": 128, "all-gather": 32, "reduce-scatter": 0,
                    "all-to-all": 0, "collective-permute": 40}
  assert bench_utils.largest_collectives(HLO, top=2) == [
      "all-reduce f32[8,4]", "collective-permute s32[10]"]


def test_benchmark_layers_records_every_conv_and_patches_equal_the_conv():
  """What experiments/benchmark_layers.py times: the convs it times are the backbone's, at the
  shapes the step runs them, and its im2col variant computes the same convolution."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from configs import supervised_fmnist

  config = supervised_fmnist.get_config("runlocal")
  images = np.zeros((4, 28, 28, 1), np.float32)
  calls = bench_utils.record_convs(config, images)
  names = [name for name, _, _ in calls]
  assert names[0] == "stem_conv" and len(names) == len(set(names))
  assert any(name.endswith("shortcut_conv") for name in names)
  assert all(shape[0] == 4 for _, _, shape in calls)
  assert calls[0][2] == (4, 28, 28, 1)
  rng = np.random.default_rng(0)
  for _, conv, shape in calls:
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    params = conv.init(jax.random.PRNGKey(0), x)
    np.testing.assert_allclose(
        bench_utils.patches_conv(conv, params["params"]["kernel"], x),
        conv.apply(params, x), rtol=1e-4, atol=1e-4)


def test_remat_probe_counts_the_plain_backprop_activations():
  """fit_check --remat_probe: without remat the gradient keeps every layer's two
  activations (the probe's reference point); the remat number is the backend's and is
  only reported, since whether XLA's memory analysis sees remat is what it measures."""
  probe = bench_utils.remat_probe(layers=6, width=64, rows=1024)
  one = probe["activation MiB (one)"]
  assert one == 1024 * 64 * 4 / 2 ** 20
  assert probe["plain temp MiB"] >= 2 * 6 * one * 0.9
  assert probe["remat temp MiB"] > 0
