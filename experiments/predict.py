"""Classifies image files with a trained run: one CSV row (file, class, probability) each.

  python experiments/predict.py --workdir=/tmp/fixmatch --images=photos/ [--output=out.csv]
      [--weights=ema|online] [--batch_size=256]

Reads every .png / .jpg / .jpeg under --images (any depth), converts it to the model's
channels and size as the run's eval view did (semissl/inference/image_files.py),
and writes `file,class,probability` rows (file relative to --images, sorted; class the
dataset's class name, or its index when the dataset has none; probability of that
top class) to --output (default: stdout). The model comes from `semissl.load`
(only the workdir; no TensorFlow). Bad input is one line on stderr, exit status 2.
"""
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's workdir.")
_IMAGES = flags.DEFINE_string("images", None, "Folder of .png / .jpg files (any depth).")
_OUTPUT = flags.DEFINE_string("output", "-", "CSV path; '-' writes to stdout.")
_WEIGHTS = flags.DEFINE_enum("weights", "auto", ["auto", "ema", "online"],
                             "auto: the run's validation-chosen weights, else EMA.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Images per forward pass.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of input errors.")
flags.mark_flags_as_required(["workdir", "images"])


def predictions(workdir: str, folder: str, *, weights: str = "auto",
                batch_size: int = 256) -> list[tuple[str, str, float]]:
  """(file relative to `folder`, class, probability) of each image file, sorted."""
  from semissl import inference  # lazy: after flag parsing

  model = inference.load(workdir, weights=weights, batch_size=batch_size)
  model.check_classifier()  # before reading any file
  files = inference.find_images(folder)
  images = inference.read_images([os.path.join(folder, f) for f in files],
                                 image_shape=model.image_shape,
                                 eval_view=model.info.get("eval_view"))
  probabilities = model.predict(images)
  names = model.class_names or [str(k) for k in range(model.num_classes)]
  top = probabilities.argmax(-1)
  return [(f.replace(os.sep, "/"), names[k], float(p[k]))
          for f, k, p in zip(files, top, probabilities)]


def write_csv(rows, output) -> None:
  writer = csv.writer(output)
  writer.writerow(["file", "class", "probability"])
  for file, name, probability in rows:
    writer.writerow([file, name, f"{probability:.6f}"])


def main(argv):
  del argv
  try:
    rows = predictions(_WORKDIR.value, _IMAGES.value, weights=_WEIGHTS.value,
                       batch_size=_BATCH_SIZE.value)
  except (ValueError, FileNotFoundError, PermissionError) as error:
    if _DEBUG.value:
      raise
    lines = [line for line in str(error).splitlines() if line.strip()]
    print(f"error: {lines[0] if lines else type(error).__name__}", file=sys.stderr, flush=True)
    sys.exit(2)
  if _OUTPUT.value == "-":
    write_csv(rows, sys.stdout)
  else:
    with open(_OUTPUT.value, "w", newline="") as output:
      write_csv(rows, output)
    print(f"wrote {len(rows)} predictions to {_OUTPUT.value}", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
