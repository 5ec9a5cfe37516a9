"""HyperSubject core: pure PyTorch hypernetwork → LoRA, per-sample application, checkpoint format, HM-CFG (no comfy)."""
from .checkpoint import FORMAT_VERSION, CheckpointError, load, save, write_atomic
from .config import HyperNetConfig
from .decoder import WeightDecoder
from .encoders import (CLIP_VISION_TOKEN_DIMS, COMBINE_MODES, EmbeddedEncoder, EncoderSpec, combine_references,
                       resize_center_crop, to_rgb)
from .hmcfg import fold_hm_cfg, fold_into_cond, hm_cfg
from .lora import PredictedLoRA, kohya_stem, to_lora_state_dict
from .network import HyperNet, ParameterCount, count_parameters
from .per_sample import PerSampleLoRA
from .regularization import lora_inner, relative_distance, weight_l2
from .targets import ATTENTION_PATTERN, FAMILIES, FLUX_PATTERN, Target, family_of, family_targets, find_targets

__all__ = [
    "ATTENTION_PATTERN", "CLIP_VISION_TOKEN_DIMS", "COMBINE_MODES", "CheckpointError", "EmbeddedEncoder",
    "EncoderSpec", "FAMILIES", "FLUX_PATTERN", "FORMAT_VERSION", "HyperNet", "HyperNetConfig", "ParameterCount",
    "PerSampleLoRA", "PredictedLoRA", "Target", "WeightDecoder", "combine_references", "count_parameters",
    "family_of", "family_targets", "find_targets", "fold_hm_cfg", "fold_into_cond", "hm_cfg", "kohya_stem",
    "load", "lora_inner", "relative_distance", "resize_center_crop", "save", "to_lora_state_dict", "to_rgb",
    "weight_l2", "write_atomic",
]
