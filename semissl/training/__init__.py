"""semissl.training: TrainState, the one train step, mesh, optimizers, checkpoints, loop.

TensorFlow-free: the data pipeline and clu's writers are imported lazily.
"""
from semissl.training.safety import Interrupted, NonFiniteError, RunError, SaveError
from semissl.training.optimizers import DEFAULT_NO_DECAY
from semissl.training.sharding import make_mesh, tree_shardings, global_batch
from semissl.training.setup import Run, build
from semissl.training.step import make_eval_step, make_train_step
from semissl.training.train_loop import train_and_evaluate
from semissl.training.train_state import TrainState

__all__ = ["DEFAULT_NO_DECAY", "Interrupted", "NonFiniteError", "Run", "RunError",
           "SaveError", "TrainState", "build", "global_batch", "make_eval_step", "make_mesh", "make_train_step",
           "train_and_evaluate", "tree_shardings"]
