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
