"""SimCLRv2 NT-Xent loss (SimCLRv2 Eq. 1) with optional MoCo queue negatives.

Pure jax functions. Under `jax.jit` with `z_a`/`z_b` given as global arrays
sharded over the batch, the [2N, 2N] similarity matrix spans the *global* batch,
so every anchor sees the negatives of all devices (and gradients flow back to
the other devices' embeddings, as in SimCLR's cross-replica loss) without any
collective written here: XLA inserts them.
"""

from typing import Any

import chex
import jax
import jax.numpy as jnp

from semissl.losses.common import l2_normalize
from semissl.losses.common import softmax_cross_entropy


def nt_xent(
    z_a: chex.Array,
    z_b: chex.Array,
    *,
    temperature: float,
    extra_negatives: chex.Array | None = None,
) -> tuple[chex.Array, dict[str, Any]]:
  """NT-Xent loss of SimCLRv2 Eq. 1, averaged over all 2N anchors.

  Views `z_a[i]` and `z_b[i]` are the positive pair (2k-1, 2k) of Eq. 1. Every
  one of the 2N embeddings is an anchor; its denominator runs over the other
  2N-1 embeddings (the self-similarity is masked out) plus, if given,
  `extra_negatives`. sim is the cosine similarity (inputs are l2-normalised
  here, zero vectors safely).

  The loss is the mean over the 2N anchors, i.e. the mean of the two directions;
  SimCLR's reference code sums the two directions' batch means (2x this value).

  Args:
    z_a: [N, D] projections of the first view.
    z_b: [N, D] projections of the second view.
    temperature: tau of Eq. 1.
    extra_negatives: optional [Q, D] MoCo memory queue of EMA-encoder embeddings
      (SimCLRv2 §2 item 3), appended to every anchor's denominator as negatives,
      under stop_gradient.

  Returns:
    (loss, extras) with extras `contrastive_accuracy` (fraction of anchors whose
    largest logit is their positive) and `positive_cosine` (mean cos(z_a, z_b)).
  """
  chex.assert_rank([z_a, z_b], 2)
  chex.assert_equal_shape([z_a, z_b])
  n = z_a.shape[0]
  z = l2_normalize(jnp.concatenate([z_a, z_b], axis=0))  # [2N, D]
  logits = z @ z.T / temperature  # [2N, 2N]
  anchor = jnp.arange(2 * n)
  logits = jnp.where(anchor[:, None] == anchor[None, :], -jnp.inf, logits)
  if extra_negatives is not None:
    chex.assert_rank(extra_negatives, 2)
    queue = jax.lax.stop_gradient(l2_normalize(extra_negatives))
    logits = jnp.concatenate([logits, z @ queue.T / temperature], axis=1)
  positive = (anchor + n) % (2 * n)
  positive_logits = jnp.take_along_axis(logits, positive[:, None], axis=1)[:, 0]
  extras = {
      "contrastive_accuracy": jnp.mean(
          (jnp.argmax(logits, axis=1) == positive).astype(jnp.float32)
      ),
      "positive_cosine": jnp.mean(positive_logits) * temperature,
  }
  # -log softmax(logits)_positive, averaged over the 2N anchors.
  return softmax_cross_entropy(logits=logits, labels=positive), extras
