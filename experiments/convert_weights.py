"""Converts torchvision ResNet / timm (MAE) ViT weights into a semissl workdir, and back.

  # in: a torch checkpoint -> a workdir that config.init_from takes
  python experiments/convert_weights.py --from=timm_vit \\
      --checkpoint=mae_pretrain_vit_base.pth --workdir=/runs/mae_vitb
  python experiments/convert_weights.py --from=torchvision_resnet50 \\
      --checkpoint=resnet50.pth --workdir=/runs/tv_r50 [--head]
  # out: a workdir's encoder (+ 'head/dense' classifier) -> torchvision / timm names
  python experiments/convert_weights.py --workdir=/runs/semi --export=vitb.safetensors \\
      [--weights=auto|online|ema] [--nohead]

--checkpoint: .pth / .pt / .bin (torch.load(weights_only=True); {'model': ...} as MAE
saves it is unwrapped) or .safetensors. --head also converts the classifier
(torchvision 'fc', timm 'head') into 'head/dense', which init_from then loads into a
run with as many classes. The layout of an export follows the workdir's backbone (a
ResNet -> torchvision, a ViT -> timm). Needs `pip install 'semissl[convert]'`. Bad
input is one line on stderr, exit status 2, before anything is written
(`--debug` shows the traceback). See semissl/convert/.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

_FROM = flags.DEFINE_string("from", None, "Layout of --checkpoint: torchvision_resnet50 "
                            "(any torchvision ResNet depth) or timm_vit (timm / MAE ViT).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "The .pth / .safetensors to import.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Import: the new workdir to write. Export: "
                               "the run (or converted) workdir to read.")
_EXPORT = flags.DEFINE_string("export", None, "Export --workdir's encoder to this "
                              ".safetensors file instead of importing.")
_HEAD = flags.DEFINE_bool("head", None, "Import: also convert the classifier (default: "
                          "no). Export: include 'head/dense' when the run has one "
                          "(default: yes).")
_NUM_HEADS = flags.DEFINE_integer("num_heads", None, "ViT attention heads, when the width "
                                  "is not a ViT-Ti/S/B/L/H width.")
_WEIGHTS = flags.DEFINE_enum("weights", "auto", ["auto", "online", "ema"], "Export: auto is "
                             "the run's validation-chosen weights, else EMA (online for a "
                             "converted workdir).")
_DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of input errors.")


def run() -> str:
  """Does what the flags ask; returns the line to print. ValueError on bad input."""
  from semissl import convert  # noqa: PLC0415  (lazy: after flag parsing)

  if not _WORKDIR.value:
    raise ValueError("--workdir is required: the workdir to write (import) or read "
                     "(--export).")
  if _EXPORT.value is not None:
    if _CHECKPOINT.value or _FROM.value or _NUM_HEADS.value is not None:
      raise ValueError("--export reads --workdir only; drop --checkpoint / --from / "
                       "--num_heads.")
    result = convert.export_workdir(workdir=_WORKDIR.value, output=_EXPORT.value,
                                    weights=_WEIGHTS.value, head=_HEAD.value is not False)
    return (f"wrote {result['tensors']} tensors ({result['layout']} names, {result['weights']}"
            f" weights{', with the classifier' if result['head'] else ''}) to "
            f"{_EXPORT.value}")
  if not _FROM.value or not _CHECKPOINT.value:
    raise ValueError(f"pass --from ({' or '.join(convert.SOURCES)}) and --checkpoint to "
                     "import, or --export=<file.safetensors> to export.")
  converted = convert.import_checkpoint(source=_FROM.value, checkpoint=_CHECKPOINT.value,
                                        workdir=_WORKDIR.value, head=bool(_HEAD.value),
                                        num_heads=_NUM_HEADS.value)
  size = f", images {converted.image_size}x{converted.image_size}" if converted.image_size else ""
  return (f"wrote {_WORKDIR.value}: use config.init_from={_WORKDIR.value} with config.model "
          f"{json.dumps(converted.model)}{size}")


def main(argv):
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}; every input is a --flag.", file=sys.stderr)
    sys.exit(2)
  try:
    line = run()
  except (ValueError, FileNotFoundError, PermissionError) as error:
    if _DEBUG.value:
      raise
    lines = [line for line in str(error).splitlines() if line.strip()]
    print(f"error: {lines[0] if lines else type(error).__name__}", file=sys.stderr, flush=True)
    sys.exit(2)
  print(line)


if __name__ == "__main__":
  app.run(main)
