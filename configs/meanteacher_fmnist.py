"""Mean Teacher (Tarvainen & Valpola 2017) on Fashion-MNIST, CPU-sized.

  python experiments/main.py --config=configs/meanteacher_fmnist.py --workdir=/tmp/mt
Variants: labels=, dataset=, runlocal (see configs/classic_fmnist_common.py).

Teacher = the engine's EMA with decay 0.999 (the paper's late-training value)
and the 'mean_teacher' warm-up min(1 - 1/(k + 1), 0.999), so the early teacher
is the true average of the students seen so far. Student and teacher see their
own crop+flip view; softmax-MSE consistency weighted by w_max x the sigmoid
ramp-up over the first third of training. w_max = 10 and mu = 3 are our
Fashion-MNIST choices. The reported `eval_ema_top1` is the teacher's accuracy.
"""
from configs import classic_fmnist_common as classic


def get_config(arg=None):
  args = classic.parse_args(arg)
  views = {"student": classic.WEAK_VIEW, "teacher": classic.WEAK_VIEW}
  config = classic.fmnist_config(args, method_name="mean_teacher",
                                 labelled_views=views, unlabelled_views=views, mu=3)
  classic.sigmoid_consistency(config)
  classic.mean_teacher_ema(config)
  return classic.finish(config, args)
