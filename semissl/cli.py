"""The training command: flags -> config -> semissl.training.train_and_evaluate.

  semissl-train --config=semppl_r50:labels=1pct --workdir=gs://...     # installed
  python experiments/main.py --config=configs/supervised_fmnist.py --workdir=/tmp/run

`--config` is a config file path or the name of a shipped config (the `configs`
package installed with semissl; see README's "Methods and configs").

Exit status: 0 finished; 1 stopped by a non-finite loss or a failed checkpoint
write; 2 bad input (one line saying what to change; `--debug` shows the
traceback); 128 + signal (143 SIGTERM, 130 SIGINT) interrupted after saving:
rerun the same command to resume.
"""
import os
import sys

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from semissl.training import safety, train_and_evaluate
from semissl.training.metrics import quiet_library_logs

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and results.json go here.")
_DISTRIBUTED = flags.DEFINE_bool(
    "jax_distributed", False,
    "Call jax.distributed.initialize() (multi-host TPU/GPU, or several local CPU processes).")
_ALLOW = flags.DEFINE_list(
    "allow_config_change", [],
    "Config keys a resume may change although the workdir was started with other values "
    "(e.g. num_train_steps); without it such a resume is refused.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of input errors.")
flags.mark_flags_as_required(["config", "workdir"])

# Errors whose message says what to change: printed as one line (exit status 2).
INPUT_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError,
                PermissionError, FileExistsError)


def _fail(message: str, code: int) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _one_line(error: BaseException) -> str:
  """The last non-empty line of an error (a config file's error arrives wrapped in
  the flag parser's message, traceback included)."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  lines = [line for line in lines if not line.startswith("Pass --help")]
  text = lines[-1] if lines else type(error).__name__
  if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'":
    text = text[1:-1]
  return text


def _key_error_text(error: BaseException) -> str:
  """The message of a (wrapped) KeyError, not its repr."""
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  return str(error.args[0]) if error.args else str(error)


def _unknown_override(error: BaseException, argv) -> str | None:
  """'--config.X: the config has no key X' for an override of a missing key."""
  if not isinstance(error, (AttributeError, KeyError)):
    return None
  lines = _key_error_text(error).splitlines() or [""]
  key = lines[0].strip("\"' ")
  hint = " ".join(line.strip() for line in lines[1:])  # ml_collections' 'Did you mean'
  for arg in argv:
    name = arg.split("=", 1)[0]
    if name.startswith("--config.") and name.split(".")[-1] == key:
      return (f"{name}: the config has no key {key!r}"
              + (f"; {hint}" if hint else "; overrides only change existing keys"))
  return None


def parse_flags(argv):
  """absl's parser, with one-line errors for bad flags and config overrides."""
  debug = any(arg in ("--debug", "--debug=true", "--debug=True") for arg in argv)
  try:
    args = flags.FLAGS(argv)
    _CONFIG.value.get("seed")  # a config file that failed to load raises here
    return args
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError, OSError) as error:
    if debug:
      raise
    _fail((_unknown_override(error, argv) or _one_line(error))
          + "  (--debug shows the traceback)", 2)


def main(argv):
  del argv
  if logging.get_verbosity() <= logging.INFO:
    quiet_library_logs()  # orbax logs dozens of INFO lines per save; --verbosity=1 shows them
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  logging.info("JAX processes: %d, local devices: %d, global devices: %d",
               jax.process_count(), jax.local_device_count(), jax.device_count())
  try:
    results = train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                 allow_config_change=tuple(_ALLOW.value))
  except safety.RunError as error:
    _fail(str(error), error.exit_code)
  except INPUT_ERRORS as error:
    if _DEBUG.value:
      raise
    _fail(_one_line(error) + "  (--debug shows the traceback)", 2)
  if jax.process_index() == 0:
    summary = ", ".join(f"{k}={v:.4f}" for k, v in sorted(results.items())
                        if k.startswith("eval_") and isinstance(v, float))
    print(f"Final: {summary}", flush=True)


# Shipped configs that were renamed, old name -> new name: the old name (as a name
# or as a path that no longer exists) fails with one line naming the new one.
RENAMED_CONFIGS = {"sempl_fmnist": "semppl_fmnist", "sempl_r50": "semppl_r50"}


def _check_not_renamed(spec: str, name: str, sep: str, variants: str) -> None:
  directory, file = os.path.split(name)
  stem, extension = os.path.splitext(file)
  new = RENAMED_CONFIGS.get(stem)
  if new is not None and not os.path.exists(name):
    renamed = os.path.join(directory, new + extension) + sep + variants
    _fail(f"--config={spec}: config {stem!r} is now {new!r}; use --config={renamed}", 2)


def config_path(spec: str) -> str:
  """`--config` as a file path: a shipped config's name ('semppl_r50', with optional
  ':variants') becomes the path of configs/semppl_r50.py in the installed `configs`
  package; a path (with '/' or ending in .py) is kept. A renamed config's old name
  (`RENAMED_CONFIGS`) is refused with its new one."""
  name, sep, variants = spec.partition(":")
  _check_not_renamed(spec, name, sep, variants)
  if "/" in name or name.endswith(".py") or not name:
    return spec
  import configs  # the shipped configs (a clone's configs/ when run from a clone)
  path = os.path.join(os.path.dirname(os.path.abspath(configs.__file__)), name + ".py")
  if not os.path.exists(path):
    known = sorted(f[:-3] for f in os.listdir(os.path.dirname(path))
                   if f.endswith(".py") and f[:-3] not in ("__init__", "common")
                   and not f.endswith("_common.py"))
    _fail(f"--config={spec}: no shipped config {name!r}; known: {', '.join(known)} "
          "(or pass a config file path)", 2)
  return path + sep + variants


def _with_config_paths(argv: list[str]) -> list[str]:
  out = []
  for arg in argv:
    if arg.startswith("--config="):
      arg = "--config=" + config_path(arg[len("--config="):])
    out.append(arg)
  return out


def run() -> None:
  """The `semissl-train` console command (and experiments/main.py)."""
  app.run(main, argv=_with_config_paths(sys.argv), flags_parser=parse_flags)

