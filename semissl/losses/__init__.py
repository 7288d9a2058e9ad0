"""semissl.losses: every equation of the papers as a pure JAX function.

jax, chex and optax only: importing this package never imports TensorFlow or flax
modules.
"""
# --- shared: reductions, cross-entropy, KL, label smoothing, l2 normalisation ---
from semissl.losses.common import cross_entropy_with_probs
from semissl.losses.common import kl_divergence_with_probs
from semissl.losses.common import l2_normalize
from semissl.losses.common import reduce_loss
from semissl.losses.common import smooth_labels
from semissl.losses.common import softmax_cross_entropy
# --- end shared ---
# --- contrastive family (SimCLRv2, SemPPL) ---
from semissl.losses.contrastive import nt_xent
from semissl.losses.distillation import distillation
from semissl.losses.distillation import distillation_with_labels
from semissl.losses.queue import EMPTY_LABEL
from semissl.losses.queue import EmbeddingQueue
from semissl.losses.queue import init_embedding_queue
from semissl.losses.queue import push_embedding_queue
from semissl.losses.semppl import invariance_kl
from semissl.losses.semppl import sample_negative_indices
from semissl.losses.semppl import semppl_contrastive
from semissl.losses.semppl import semppl_log_probs
from semissl.losses.semppl import semppl_loss
from semissl.losses.semppl_knn import knn_pseudo_labels
from semissl.losses.semppl_knn import sample_semantic_positives
# --- end contrastive family ---
# --- pseudo-label family (SimMatch, FixMatch/Semi-ViT, Noisy Student, classic) ---
from semissl.losses.consistency import entropy_minimization
from semissl.losses.consistency import interpolation_consistency_loss
from semissl.losses.consistency import mean_teacher_loss
from semissl.losses.consistency import pi_model_loss
from semissl.losses.consistency import sharpen
from semissl.losses.consistency import softmax_mse_consistency
from semissl.losses.consistency import temporal_ensemble_target
from semissl.losses.consistency import temporal_ensemble_update
from semissl.losses.consistency import TSA_SCHEDULES
from semissl.losses.consistency import tsa_cross_entropy
from semissl.losses.consistency import tsa_threshold
from semissl.losses.consistency import uda_loss
from semissl.losses.consistency import VAT_POWER_ITERATIONS
from semissl.losses.consistency import vat_adversarial_direction
from semissl.losses.consistency import vat_loss
from semissl.losses.distribution_alignment import align_distribution
from semissl.losses.distribution_alignment import align_with_window
from semissl.losses.distribution_alignment import DistributionAlignmentWindow
from semissl.losses.distribution_alignment import init_distribution_alignment_window
from semissl.losses.distribution_alignment import push_and_align
from semissl.losses.distribution_alignment import push_distribution_window
from semissl.losses.distribution_alignment import window_mean
from semissl.losses.ema import byol_cosine_ema_decay
from semissl.losses.ema import ema_schedule
from semissl.losses.ema import ema_update
from semissl.losses.ema import mean_teacher_ema_decay
from semissl.losses.fixmatch import fixmatch_loss
from semissl.losses.fixmatch import pseudo_label_loss
from semissl.losses.fixmatch import thresholded_cross_entropy
from semissl.losses.label_propagation import diffuse as label_propagation_diffuse
from semissl.losses.label_propagation import edge_matvec
from semissl.losses.label_propagation import knn_affinity
from semissl.losses.label_propagation import knn_search
from semissl.losses.label_propagation import normalize_affinity
from semissl.losses.label_propagation import propagate_labels
from semissl.losses.label_propagation import pseudo_label_weights
from semissl.losses.label_propagation import weighted_cross_entropy
from semissl.losses.meta_pseudo_labels import loss_with_gradient
from semissl.losses.meta_pseudo_labels import meta_pseudo_labels_teacher_loss
from semissl.losses.mixing import cutmix
from semissl.losses.mixing import mixup
from semissl.losses.mixing import mixup_or_cutmix
from semissl.losses.mixing import probabilistic_pseudo_mixup
from semissl.losses.mixing import pseudo_mixup_loss
from semissl.losses.mixing import sample_mix_ratio
from semissl.losses.mixmatch import mixmatch_guess_labels
from semissl.losses.mixmatch import mixmatch_loss
from semissl.losses.mixmatch import mixmatch_mix
from semissl.losses.mixmatch import mixmatch_mix_ratio
from semissl.losses.noisy_student import class_balance_weights
from semissl.losses.noisy_student import confidence_filter
from semissl.losses.noisy_student import noisy_student_loss
from semissl.losses.noisy_student import soft_pseudo_labels
from semissl.losses.noisy_student import update_class_counts
from semissl.losses.remixmatch import remixmatch_guess
from semissl.losses.remixmatch import remixmatch_loss
from semissl.losses.remixmatch import soft_cross_entropy
from semissl.losses.simmatch import init_labelled_bank
from semissl.losses.simmatch import instance_similarity
from semissl.losses.simmatch import LabelledBank
from semissl.losses.simmatch import simmatch_instance_loss
from semissl.losses.simmatch import simmatch_propagate
from semissl.losses.simmatch import simmatch_unlabelled_loss
from semissl.losses.simmatch import update_labelled_bank
# --- end pseudo-label family ---
