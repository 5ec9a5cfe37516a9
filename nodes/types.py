"""The pack's custom socket types (namespaced once, here) and the values that travel on them."""
from dataclasses import dataclass

from comfy_api.latest import io
from torch import Tensor

from ..hypernet import HyperNet, PredictedLoRA

CATEGORY = "HyperSubject"
MODEL_FOLDER = "hypersubject"

HyperSubjectNet = io.Custom("HYPERSUBJECT_NET")
SubjectEmbeds = io.Custom("SUBJECT_EMBEDS")
SubjectLoRA = io.Custom("SUBJECT_LORA")


@dataclass(frozen=True)
class LoadedNet:
    """A validated hypernetwork and the file it came from."""

    net: HyperNet
    name: str
    metadata: dict


@dataclass(frozen=True)
class Embeds:
    """One subject's tokens [1, N, D] (None: no usable image, by the on_bad_input policy) and where they came from."""

    tokens: Tensor | None
    net_name: str
    source_hash: str
    images_used: int


@dataclass(frozen=True)
class Lora:
    """A predicted LoRA for one subject (None: no subject, applies as "no change") and its provenance."""

    lora: PredictedLoRA | None
    net_name: str
    source_hash: str
