"""timm / MAE ViT <-> semissl `models.ViT` (learned position table).

timm's `VisionTransformer` (e.g. `vit_base_patch16_224`) and MAE's encoder
(`models_mae.py`, the same timm names plus a decoder) are pre-LN ViTs with
LayerNorm epsilon 1e-6, exact GELU and a fused qkv projection, as semissl's `ViT`.
Names (D = width, H = heads, D = H * hd):

  patch_embed.proj [D, C, p, p]      backbone/embedding kernel [p, p, C, D]
  pos_embed [1, 1 + N, D]            backbone/pos_embedding [1, N, D] (patch rows)
  cls_token [1, 1, D]                backbone/cls = cls_token + pos_embed[:, 0]
  blocks.{i}.norm1 / norm2           backbone/encoderblock_{i}/norm1 / norm2
  blocks.{i}.attn.qkv [3D, D]        .../attention/query|key|value kernel [D, H, hd]
  blocks.{i}.attn.proj [D, D]        .../attention/out kernel [H, hd, D]
  blocks.{i}.mlp.fc1 / fc2           .../mlp/Dense_0 / Dense_1
  norm                               backbone/encoder_norm
  head                               head/dense (optional)

semissl adds position embeddings to the patch tokens only, so the class token's
row of `pos_embed` is folded into `cls` (exact: the class token enters the
blocks as cls_token + pos_embed[:, 0] either way); the export writes `cls` as
cls_token and a zero row. 'tok' pooling (the class token after the final norm)
equals timm's `global_pool='token'`. semissl's 'gap' ViT has no class token and
averages the normalised patch tokens: timm's `VisionTransformer(class_token=False,
global_pool='avg', fc_norm=False)`, which is what a 'gap' ViT exports to (its
`pos_embed` has no class row). A class-token checkpoint loads into a 'gap' run too
(`init_from` skips `cls`), but that network then differs from the checkpoint's
(no class token in the sequence). MAE's decoder (`decoder_*`, `mask_token`) is
ignored. Refused: fine-tuned global-pool checkpoints (`fc_norm`: a LayerNorm after
pooling, which semissl does not have), layer scale, qk-norm, register tokens.
The number of heads is not in the weights: it comes from the width (ViT-Ti/S/B/L/H
of `models.registry.VIT_SIZES`) or `num_heads`.
"""
from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from semissl.convert import common
from semissl.models import registry

SOURCE = "timm_vit"
WHAT = "timm / MAE ViT"
IGNORED = ("decoder_", "mask_token")  # MAE's pretraining decoder
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def _model(*, width: int, depth: int, num_heads: int, mlp_dim: int, patch_size: int,
           pool: str) -> dict[str, Any]:
  """`config.model` of the semissl ViT: the registry size of `width`, overridden where
  the checkpoint differs."""
  sizes = {w: size for size, (w, _, _) in registry.VIT_SIZES.items()}
  size = sizes.get(width, "b")
  registry_width, registry_depth, registry_heads = registry.VIT_SIZES[size]
  model: dict[str, Any] = {"name": f"vit_{size}"}
  if width != registry_width:
    model["width"] = width
  if depth != registry_depth:
    model["depth"] = depth
  if num_heads != registry_heads:
    model["num_heads"] = num_heads
  if mlp_dim != 4 * registry_width:  # the registry's mlp_dim
    model["mlp_dim"] = mlp_dim
  model.update(patch_size=patch_size, posemb="learn", pool=pool)
  return model


def _heads(width: int, num_heads: int | None) -> int:
  if num_heads is None:
    by_width = {w: h for w, _, h in registry.VIT_SIZES.values()}
    if width not in by_width:
      raise ValueError(f"width {width} is not a ViT-Ti/S/B/L/H width, so the number of "
                       "heads is unknown; pass --num_heads.")
    num_heads = by_width[width]
  if num_heads < 1 or width % num_heads:
    raise ValueError(f"num_heads={num_heads} does not divide the width {width}; pass the "
                     "checkpoint's number of heads.")
  return num_heads


def to_semissl(state: dict[str, np.ndarray], *, head: bool,
               num_heads: int | None = None) -> common.Converted:
  """timm / MAE ViT state dict -> semissl variables ('tok' ViT with a class token,
  'gap' without), + timm's 'head' as 'head/dense'."""
  if "patch_embed.proj.weight" not in state or "pos_embed" not in state:
    raise ValueError("checkpoint is not a timm / MAE ViT state dict (no "
                     "'patch_embed.proj.weight' and 'pos_embed'); for a ResNet pass "
                     "--from=torchvision_resnet50.")
  if "fc_norm.weight" in state:
    raise ValueError("checkpoint has 'fc_norm' (a global-pool fine-tuned ViT): semissl's ViT "
                     "normalises before pooling and has no fc_norm; convert the pretrained "
                     "(e.g. MAE pretrain) checkpoint instead.")
  used: set[str] = set()
  get = lambda key: common.take(state, key, used=used, what=WHAT)  # noqa: E731
  patch = get("patch_embed.proj.weight")  # [D, C, p, p]
  width, channels, patch_size = patch.shape[0], patch.shape[1], patch.shape[2]
  depth = 1 + max((int(m.group(1)) for m in map(_BLOCK.match, state) if m), default=-1)
  if depth < 1:
    raise ValueError("checkpoint has no 'blocks.0.*': not a ViT state dict.")
  heads = _heads(width, num_heads)
  has_cls = "cls_token" in state
  pos = get("pos_embed")  # [1, T, D]
  tokens = pos.shape[1]
  # timm's default adds a class row to pos_embed; `no_embed_class` models do not.
  class_row = has_cls and math.isqrt(tokens - 1) ** 2 == tokens - 1
  grid = math.isqrt(tokens - class_row)
  if grid * grid != tokens - class_row:
    raise ValueError(f"pos_embed has {tokens} rows: not a square grid of patches (plus a "
                     "class row); only square images convert.")
  out: dict[str, np.ndarray] = {}
  b = f"params/{common.BACKBONE}"
  out[f"{b}/embedding/kernel"] = common.conv_to_flax(patch)
  out[f"{b}/embedding/bias"] = get("patch_embed.proj.bias")
  out[f"{b}/pos_embedding"] = pos[:, int(class_row):]
  if has_cls:
    out[f"{b}/cls"] = get("cls_token") + (pos[:, :1] if class_row else 0.0)
  hd = width // heads
  for i in range(depth):
    t, f = f"blocks.{i}", f"{b}/encoderblock_{i}"
    for norm in ("norm1", "norm2"):
      out[f"{f}/{norm}/scale"] = get(f"{t}.{norm}.weight")
      out[f"{f}/{norm}/bias"] = get(f"{t}.{norm}.bias")
    qkv_w, qkv_b = get(f"{t}.attn.qkv.weight"), get(f"{t}.attn.qkv.bias")
    for index, name in enumerate(("query", "key", "value")):
      rows = slice(index * width, (index + 1) * width)
      out[f"{f}/attention/{name}/kernel"] = qkv_w[rows].T.reshape(width, heads, hd)
      out[f"{f}/attention/{name}/bias"] = qkv_b[rows].reshape(heads, hd)
    out[f"{f}/attention/out/kernel"] = get(f"{t}.attn.proj.weight").T.reshape(heads, hd, width)
    out[f"{f}/attention/out/bias"] = get(f"{t}.attn.proj.bias")
    for index, name in enumerate(("fc1", "fc2")):
      out[f"{f}/mlp/Dense_{index}/kernel"] = common.dense_to_flax(get(f"{t}.mlp.{name}.weight"))
      out[f"{f}/mlp/Dense_{index}/bias"] = get(f"{t}.mlp.{name}.bias")
  out[f"{b}/encoder_norm/scale"] = get("norm.weight")
  out[f"{b}/encoder_norm/bias"] = get("norm.bias")
  num_classes = None
  if head and "head.weight" not in state:
    raise ValueError("checkpoint has no classifier 'head' (e.g. an MAE pretrain "
                     "checkpoint); drop --head.")
  if head:
    out[f"params/{common.HEAD}/kernel"] = common.dense_to_flax(get("head.weight"))
    out[f"params/{common.HEAD}/bias"] = get("head.bias")
    num_classes = int(out[f"params/{common.HEAD}/bias"].shape[0])
  common.check_all_used(state, used, ignored=IGNORED + (() if head else ("head.",)),
                        what=WHAT)
  model = _model(width=width, depth=depth, num_heads=heads,
                 mlp_dim=int(out[f"{b}/encoderblock_0/mlp/Dense_0/bias"].shape[0]),
                 patch_size=patch_size, pool="tok" if has_cls else "gap")
  image_size = grid * patch_size
  common.check_fits(variables=out, model=model, image_shape=(image_size, image_size, channels))
  return common.Converted(variables=out, model=model, image_size=image_size,
                          num_classes=num_classes)


def is_semissl_vit(backbone: dict[str, Any]) -> bool:
  """Whether flat backbone params {'embedding/kernel': ...} are a semissl ViT's."""
  return "embedding/kernel" in backbone and "encoder_norm/scale" in backbone


def to_torch(params: dict[str, np.ndarray], *,
             head: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
  """Flat semissl ViT backbone params (paths below 'backbone/') -> timm state dict
  (with a class token for a 'tok' ViT, without for 'gap'), `head` as 'head'."""
  if "pos_embedding" not in params:
    raise ValueError("this ViT has a fixed sine-cosine position table (posemb='sincos2d'), "
                     "no pos_embedding parameter; only posemb='learn' ViTs export.")
  depth = 1 + max(int(m.group(1)) for m in
                  map(re.compile(r"^encoderblock_(\d+)/").match, params) if m)
  pos = params["pos_embedding"]
  width = pos.shape[-1]
  out: dict[str, np.ndarray] = {"patch_embed.proj.weight":
                                common.conv_to_torch(params["embedding/kernel"]),
                                "patch_embed.proj.bias": params["embedding/bias"]}
  if "cls" in params:
    out["cls_token"] = params["cls"]
    out["pos_embed"] = np.concatenate([np.zeros((1, 1, width), pos.dtype), pos], axis=1)
  else:
    out["pos_embed"] = pos
  known = {"embedding/kernel", "embedding/bias", "pos_embedding", "cls",
           "encoder_norm/scale", "encoder_norm/bias"}
  for i in range(depth):
    f, t = f"encoderblock_{i}", f"blocks.{i}"
    for norm in ("norm1", "norm2"):
      out[f"{t}.{norm}.weight"] = params[f"{f}/{norm}/scale"]
      out[f"{t}.{norm}.bias"] = params[f"{f}/{norm}/bias"]
    names = ("query", "key", "value")
    out[f"{t}.attn.qkv.weight"] = np.concatenate(
        [params[f"{f}/attention/{n}/kernel"].reshape(width, width).T for n in names])
    out[f"{t}.attn.qkv.bias"] = np.concatenate(
        [params[f"{f}/attention/{n}/bias"].reshape(width) for n in names])
    out[f"{t}.attn.proj.weight"] = params[f"{f}/attention/out/kernel"].reshape(width, width).T
    out[f"{t}.attn.proj.bias"] = params[f"{f}/attention/out/bias"]
    for index, name in enumerate(("fc1", "fc2")):
      out[f"{t}.mlp.{name}.weight"] = common.dense_to_torch(params[f"{f}/mlp/Dense_{index}/kernel"])
      out[f"{t}.mlp.{name}.bias"] = params[f"{f}/mlp/Dense_{index}/bias"]
    known.update(f"{f}/{rest}" for rest in
                 [f"{n}/{leaf}" for n in ("norm1", "norm2") for leaf in ("scale", "bias")]
                 + [f"attention/{n}/{leaf}" for n in names + ("out",)
                    for leaf in ("kernel", "bias")]
                 + [f"mlp/Dense_{k}/{leaf}" for k in (0, 1) for leaf in ("kernel", "bias")])
  extra = sorted(set(params) - known)
  if extra:
    raise ValueError(f"backbone parameter {extra[0]!r} has no timm counterpart; only plain "
                     "semissl ViTs export.")
  out["norm.weight"] = params["encoder_norm/scale"]
  out["norm.bias"] = params["encoder_norm/bias"]
  if head is not None:
    out["head.weight"] = common.dense_to_torch(head["kernel"])
    out["head.bias"] = head["bias"]
  return {k: np.ascontiguousarray(v) for k, v in out.items()}
