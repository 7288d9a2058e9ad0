"""Entry point: flags -> config -> semissl.training.train_and_evaluate (semissl/cli.py).

  python experiments/main.py --config=configs/supervised_fmnist.py --workdir=/tmp/run
  python experiments/main.py --config=configs/semppl_r50.py:labels=1pct --workdir=gs://...
  python experiments/main.py --config=semppl_r50:labels=1pct --workdir=...   # by name

The installed package has the same command as `semissl-train`. Exit status: 0
finished; 1 stopped by a non-finite loss or a failed checkpoint write; 2 bad input
(one line saying what to change; `--debug` shows the traceback); 128 + signal (143
SIGTERM, 130 SIGINT) interrupted after saving: rerun the same command to resume.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from semissl import cli  # noqa: E402

if __name__ == "__main__":
  cli.run()
