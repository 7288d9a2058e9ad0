"""Validation / labelled / unlabelled splits of the training set (NumPy only, no TF).

The labelled subset is chosen per class (stratified) with a seeded generator, so it is
the same in every run and whatever the number of processes. SimCLR's 1%/10% ImageNet
subsets (SimCLRv2 §3, `1percent.txt`) are given as id files instead; see
`read_labelled_ids`.

An optional validation split (`data.validation_size`) is held out of the training
split first (`choose_validation_ids`: stratified, seeded by (split_seed, class, a
validation tag), so it does not depend on the label settings); the labelled subset is
then drawn from the remaining ids, and neither training stream ever shows a held-out id.

Symmetric label noise (`data.label_noise`, DivideMix's setting; `symmetric_label_noise`)
relabels a seeded fraction of the labelled ids after the splits are drawn.
"""
from __future__ import annotations

from collections.abc import Sequence
import math
import os

from etils import epath
import numpy as np

LABELLED_IDS_FILENAME = "labelled_ids.txt"
VALIDATION_IDS_FILENAME = "validation_ids.txt"
# Third seed word of the validation generators: theirs is (seed, class, tag), the
# labelled subset's (seed, class), so the two draws are independent.
_VALIDATION_SEED_TAG = 0x76616C  # 'val'
# Second seed word of the label-noise generator (seed, tag).
_NOISE_SEED_TAG = 0x6E6F6973  # 'nois'


def labelled_count(*, label_fraction: float, class_size: int) -> int:
  """Labelled examples kept from a class of `class_size`: round-half-up, at least 1."""
  return min(class_size, max(1, math.floor(label_fraction * class_size + 0.5)))


def _held_out_mask(num_examples: int, held_out: np.ndarray | None) -> np.ndarray:
  """bool [N]: True for the ids in `held_out`."""
  mask = np.zeros(num_examples, bool)
  if held_out is not None:
    mask[np.asarray(held_out, np.int64)] = True
  return mask


def choose_validation_ids(*, labels: np.ndarray, validation_size: int, seed: int,
                          exclude: np.ndarray | None = None) -> np.ndarray:
  """Chooses a stratified, seeded validation split to hold out of the training split.

  With K classes (in sorted label order), every class gives validation_size // K
  examples and the first validation_size % K classes one more. Class c draws from
  its own generator seeded by (seed, c, `_VALIDATION_SEED_TAG`): a permutation of
  the class's ids, skipping those in `exclude` (a given labelled ids file), so the
  split depends only on (labels, seed, validation_size, exclude), never on the
  label fraction or count.

  Args:
    labels: int [N] labels of the training split; example id = index.
    validation_size: number of validation examples in all (0: none).
    seed: split seed.
    exclude: int ids that must not be drawn, or None.

  Returns:
    Sorted int64 ids of the validation examples.

  Raises:
    ValueError: validation_size < 0, or a class has too few (non-excluded) examples.
  """
  if validation_size < 0:
    raise ValueError(f"data.validation_size={validation_size} must be >= 0 (0: none).")
  labels = np.asarray(labels)
  excluded = _held_out_mask(len(labels), exclude)
  base, extra = divmod(int(validation_size), len(np.unique(labels)))
  chosen = [np.zeros(0, np.int64)]
  for position, label in enumerate(np.unique(labels)):
    count = base + int(position < extra)
    rng = np.random.default_rng(
        [int(seed) % 2**63, int(label) % 2**63, _VALIDATION_SEED_TAG])
    order = rng.permutation(np.flatnonzero(labels == label))
    order = order[~excluded[order]]
    if count > len(order):
      where = " outside data.labelled_ids_file" if exclude is not None else ""
      raise ValueError(
          f"data.validation_size={validation_size} takes {count} examples of class "
          f"{label}, which has only {len(order)}{where}; lower data.validation_size.")
    chosen.append(order[:count])
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def choose_labelled_ids(*, labels: np.ndarray, seed: int,
                        label_fraction: float | None = None,
                        labels_per_class: int | None = None,
                        held_out: np.ndarray | None = None) -> np.ndarray:
  """Chooses a stratified, seeded labelled subset.

  Exactly one of `label_fraction` (0 < f <= 1: per class `labelled_count(f, n_c)`)
  and `labels_per_class` (the same count in every class) must be given. Each class
  draws from its own generator seeded by (seed, class), so classes are independent.
  Ids in `held_out` (the validation split) are skipped in the class's permutation:
  the counts stay those of the full classes (a fraction is capped at what is left,
  so label_fraction=1 labels every id that is not held out), and a labelled id that is not held
  out is chosen with or without a validation split.

  Args:
    labels: int [N] labels of the training split; example id = index.
    seed: split seed.
    label_fraction: fraction of each class to label.
    labels_per_class: number of labelled examples per class.
    held_out: int ids never to label (validation), or None.

  Returns:
    Sorted int64 ids of the labelled examples.
  """
  if (label_fraction is None) == (labels_per_class is None):
    raise ValueError("Set exactly one of label_fraction and labels_per_class.")
  labels = np.asarray(labels)
  classes, class_sizes = np.unique(labels, return_counts=True)
  if label_fraction is not None and not 0.0 < label_fraction <= 1.0:
    raise ValueError(
        f"data.label_fraction={label_fraction} is outside (0, 1]; choose a fraction "
        "such as 0.01 or 0.1.")
  if labels_per_class is not None:
    smallest = int(np.argmin(class_sizes))
    if labels_per_class < 1 or labels_per_class > class_sizes[smallest]:
      raise ValueError(
          f"data.labels_per_class={labels_per_class} must be in [1, "
          f"{class_sizes[smallest]}] (class {classes[smallest]} has only "
          f"{class_sizes[smallest]} examples); lower it.")
  excluded = _held_out_mask(len(labels), held_out)
  chosen = []
  for label, size in zip(classes, class_sizes):
    class_ids = np.flatnonzero(labels == label)
    if labels_per_class is not None:
      count = labels_per_class
    rng = np.random.default_rng([int(seed) % 2**63, int(label) % 2**63])
    order = rng.permutation(class_ids)
    order = order[~excluded[order]]
    if labels_per_class is None:
      # A fraction of the full class (1% = 60 Fashion-MNIST images per class with or
      # without validation), at most what the validation split leaves ('all').
      count = min(labelled_count(label_fraction=label_fraction, class_size=int(size)),
                  len(order))
    if count > len(order):
      raise ValueError(
          f"Class {label} keeps only {len(order)} examples outside the validation "
          f"split, fewer than its {count} labelled ones; lower data.validation_size "
          "or the number of labels.")
    chosen.append(order[:count])
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def symmetric_label_noise(*, labels: np.ndarray, ids: np.ndarray, fraction: float,
                          seed: int, num_classes: int) -> np.ndarray:
  """Labels with symmetric noise: a copy of `labels` in which round(fraction * len(ids))
  of `ids`, chosen by a generator seeded with (seed, a noise tag), get a label drawn
  uniformly from all `num_classes` classes, the true one included (as DivideMix's
  code does for 'sym' noise), so about fraction * (K - 1) / K of them change.
  Ids outside `ids` keep their label; fraction 0 returns an unchanged copy.

  Args:
    labels: int [N] clean labels of the split; example id = index.
    ids: int ids that may be relabelled (the labelled subset).
    fraction: r in [0, 1], the fraction of `ids` relabelled.
    seed: noise seed (`data.label_noise_seed`), independent of the split seed.
    num_classes: K; new labels are drawn from 0..K-1.
  """
  if isinstance(fraction, bool) or not 0.0 <= float(fraction) <= 1.0:
    raise ValueError(f"data.label_noise={fraction!r} must be a fraction in [0, 1] "
                     "(0: clean labels).")
  noisy = np.array(labels, copy=True)
  ids = np.asarray(ids, np.int64)
  count = int(math.floor(float(fraction) * len(ids) + 0.5))
  if count == 0:
    return noisy
  rng = np.random.default_rng([int(seed) % 2**63, _NOISE_SEED_TAG])
  chosen = rng.permutation(ids)[:count]
  noisy[chosen] = rng.integers(0, int(num_classes), size=count).astype(noisy.dtype)
  return noisy


def unlabelled_ids(*, num_examples: int, labelled_ids: np.ndarray,
                   include_labelled: bool,
                   held_out: np.ndarray | None = None) -> np.ndarray:
  """Ids of the unlabelled stream: all examples, or those not labelled; never those
  in `held_out` (the validation split)."""
  all_ids = np.arange(num_examples, dtype=np.int64)
  if held_out is not None:
    all_ids = np.setdiff1d(all_ids, held_out).astype(np.int64)
  if include_labelled:
    return all_ids
  return np.setdiff1d(all_ids, labelled_ids).astype(np.int64)


def parse_labelled_ids(lines: Sequence[str], *, num_examples: int,
                       names: Sequence[str] | None = None,
                       source: str = "labelled ids file") -> np.ndarray:
  """Turns id-file lines into sorted, unique example ids.

  A line is an integer example id, or a file name (SimCLR `1percent.txt` style)
  matched against `names` by full relative name or by base name. Blank lines and
  lines starting with '#' are skipped.

  Raises:
    ValueError: a line names no example (the message lists the first few).
  """
  entries = [line.strip() for line in lines]
  entries = [e for e in entries if e and not e.startswith("#")]
  if not entries:
    raise ValueError(f"{source} lists no ids; write one id per line.")
  name_to_id = {}
  if names is not None:
    for i, name in enumerate(names):
      name_to_id.setdefault(name, i)
    for i, name in enumerate(names):
      name_to_id.setdefault(os.path.basename(name), i)
  ids, unknown = [], []
  for entry in entries:
    try:
      example_id = int(entry)
    except ValueError:
      example_id = name_to_id.get(entry, name_to_id.get(os.path.basename(entry), -1))
    if 0 <= example_id < num_examples:
      ids.append(example_id)
    else:
      unknown.append(entry)
  if unknown:
    raise ValueError(
        f"{source} has {len(unknown)} unknown ids (e.g. {unknown[:3]}); ids must be "
        f"integers in [0, {num_examples}) or file names of the training split.")
  return np.unique(np.asarray(ids, dtype=np.int64))


def read_labelled_ids(path: str, *, num_examples: int,
                      names: Sequence[str] | None = None) -> np.ndarray:
  """Reads a labelled-ids file (one id or file name per line); see `parse_labelled_ids`."""
  file_path = epath.Path(path)
  if not file_path.exists():
    raise ValueError(f"data.labelled_ids_file={path} does not exist; fix the path.")
  return parse_labelled_ids(file_path.read_text().splitlines(),
                            num_examples=num_examples, names=names, source=str(path))


def write_labelled_ids(path: str, ids: np.ndarray) -> None:
  """Writes one integer id per line (readable by `read_labelled_ids`); also used for
  `VALIDATION_IDS_FILENAME`. Written once: an existing file with the same ids is kept,
  one with other ids is never overwritten (ValueError: the workdir is another run's)."""
  file_path = epath.Path(path)
  text = "".join(f"{int(i)}\n" for i in ids)
  if file_path.exists():
    existing = file_path.read_text()
    if existing != text:
      raise ValueError(
          f"{path} holds the {len(existing.splitlines())} ids of an earlier run, this run "
          f"has {len(ids)} others; use a new workdir (or the earlier run's split).")
    return
  file_path.parent.mkdir(parents=True, exist_ok=True)
  file_path.write_text(text)
