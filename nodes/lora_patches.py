"""What a personalized MODEL adds to its base, read from ComfyUI's weight patches.

When the personalized MODEL is a clone of the base that differs only by plain LoRAs on Linear weights (Apply
Predicted LoRA, the stock LoraLoader with any number of files at any strength), those LoRAs can run per sample in
the base's own batched UNet call (the HM-CFG fast path). Anything else (another checkpoint, conv or full-weight
patches, DoRA, model patches of its own) can only be evaluated as that MODEL itself.
"""
import comfy.utils
import torch
from comfy.weight_adapter.lora import LoRAAdapter

from ..hypernet import PredictedLoRA, Target

# model_options that only shape how CFG combines predictions: the guider takes them from the base model
CFG_LEVEL_OPTIONS = {"sampler_cfg_function", "sampler_pre_cfg_function", "sampler_post_cfg_function",
                     "disable_cfg1_optimization"}
ADDED = "the personalized MODEL's LoRA patches"


def added_linear_lora(base, personalized) -> PredictedLoRA | None:
    """The LoRAs `personalized` has on top of `base`, as one LoRA for one subject; no targets: nothing added.

    Each weight's added LoRAs are stacked along the rank, with their strength and alpha/rank folded into the down
    factor, so that scale·up@down is the sum of their deltas exactly as ComfyUI merges them. None when anything else
    tells the two models apart.
    """
    if not personalized.is_clone(base) or not _same_besides_weight_patches(base, personalized):
        return None
    targets, down, up = [], {}, {}
    for key in sorted(personalized.patches.keys() | base.patches.keys()):
        own, inherited = personalized.patches.get(key, []), base.patches.get(key, [])
        if len(own) < len(inherited) or any(a is not b for a, b in zip(own, inherited)):
            return None
        added = own[len(inherited):]
        if not added:
            continue
        weight = comfy.utils.get_attr(personalized.model, key)
        factors = [_linear_lora_factors(patch, weight) for patch in added]
        if any(f is None for f in factors):
            return None
        name = key.removesuffix(".weight")
        targets.append(Target(name, in_features=weight.shape[1], out_features=weight.shape[0]))
        up[name] = torch.cat([u for u, _ in factors], dim=1)[None]
        down[name] = torch.cat([d for _, d in factors], dim=0)[None]
    rank = max((d.shape[1] for d in down.values()), default=1)
    return PredictedLoRA(targets, down, up, rank=rank, alpha=float(rank), family=ADDED)  # scale 1: folded in down


def _linear_lora_factors(patch: tuple, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(up [out, r], strength·(alpha/r)·down [r, in]) of one patch entry, or None unless it is a plain LoRA on a
    Linear weight (no DoRA, LoCon mid, reshape, offset, post-function or model strength)."""
    strength, adapter, strength_model, offset, function = patch
    if not isinstance(adapter, LoRAAdapter) or strength_model != 1.0 or offset is not None or function is not None:
        return None
    up, down, alpha, mid, dora_scale, reshape = adapter.weights
    if mid is not None or dora_scale is not None or reshape is not None or weight.ndim != 2:
        return None
    if up.ndim != 2 or down.ndim != 2 or (up.shape[0], down.shape[1]) != tuple(weight.shape):
        return None
    scale = 1.0 if alpha is None else float(alpha) / down.shape[0]
    return up.float(), down.float() * (strength * scale)


def _same_besides_weight_patches(base, personalized) -> bool:
    """Whether the two clones evaluate the UNet alike apart from their weight patches."""
    try:
        options_equal = bool(_unet_options(personalized) == _unet_options(base))
    except RuntimeError:  # tensors among the options: cannot tell, so not the same
        return False
    return (options_equal and _same_items(personalized.object_patches, base.object_patches)
            and _same_items(personalized.weight_wrapper_patches, base.weight_wrapper_patches)
            and personalized.wrappers == base.wrappers and personalized.injections.keys() == base.injections.keys()
            and personalized.additional_models.keys() == base.additional_models.keys()
            and not personalized.hook_patches and not base.hook_patches)


def _unet_options(patcher) -> dict:
    return {k: v for k, v in patcher.model_options.items() if k not in CFG_LEVEL_OPTIONS}


def _same_items(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k] is b[k] for k in a)
