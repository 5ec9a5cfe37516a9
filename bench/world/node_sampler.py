"""ComfyUI's nodes and this pack's, run in-process under inference mode (as the executor runs them), for the
miniature world's comparison: one base checkpoint, KSampler or HM-CFG KSampler, hypernet or stock LoRA."""
import logging
import time
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from .cases import Case
from .contexts import prompt
from .subjects import CLASS_WORD, describe

log = logging.getLogger(__name__)
SAMPLER = dict(steps=20, sampler_name="euler", scheduler="normal")


@dataclass
class Row:
    """One method's images [case, prompt, seed, H, W, 3] and its personalization seconds per subject."""

    name: str
    images: np.ndarray
    seconds: float


class Sampler:
    """ComfyUI nodes in-process (under inference mode, as the executor runs them) for one base checkpoint."""

    def __init__(self, pack: dict, model, clip, vae, seeds: int, cfg: float):
        self.pack, self.model, self.clip, self.vae, self.seeds, self.cfg = pack, model, clip, vae, seeds, cfg

    @cache
    def encode(self, text: str):
        """CLIPTextEncode of one prompt, once per text (every row asks for the same prompts)."""
        import nodes

        with torch.inference_mode():
            return nodes.CLIPTextEncode().encode(self.clip, text)[0]

    @torch.inference_mode()
    def images(self, personalized, text: str, seed: int, hm_cfg: tuple[float, float] | None = None):
        """`seeds` images of the prompt: KSampler with CFG on `personalized` (or the base model when None), or the
        HM-CFG KSampler with (s_text, s_subject)."""
        import nodes

        positive, negative = self.encode(text), self.encode("")
        latent = nodes.EmptyLatentImage().generate(64, 64, self.seeds)[0]
        if hm_cfg is None:
            samples = nodes.KSampler().sample(personalized or self.model, seed, SAMPLER["steps"], self.cfg,
                                              SAMPLER["sampler_name"], SAMPLER["scheduler"], positive, negative,
                                              latent)[0]
        else:
            samples = self.pack["HMCFGKSampler"].execute(
                base_model=self.model, personalized_model=personalized, positive=positive, negative=negative,
                s_text=hm_cfg[0], s_subject=hm_cfg[1], start_percent=0.0, end_percent=1.0, latent_image=latent,
                seed=seed, denoise=1.0, **SAMPLER).args[0]
        return nodes.VAEDecode().decode(self.vae, samples)[0].numpy()

    def row(self, name: str, cases: list[Case], personalize, hm_cfg=None, described: bool = False) -> Row:
        """Images of every case × prompt; `personalize(case)` → (MODEL or None, seconds it took). The prompts name the
        class word, or, `described`, the subject's identity in words (what the base model learned to draw)."""
        images, seconds = [], []
        for i, case in enumerate(cases):
            model, spent = personalize(case)
            seconds.append(spent)
            word = describe(case.subject) if described else CLASS_WORD
            images.append([self.images(model, prompt(context, word), 1000 * i + j, hm_cfg)
                           for j, context in enumerate(case.prompts)])
        log.info("sampled %s", name)
        return Row(name, np.asarray(images), float(np.mean(seconds)))

    @torch.inference_mode()
    def hypernet_lora(self, hypernet_name: str, case: Case):
        """Encode Subject → Predict LoRA → Apply Predicted LoRA; seconds of the encode and predict."""
        (net,) = self.node("HyperSubjectLoader", hypernet_name=hypernet_name)
        started = time.perf_counter()
        image = torch.from_numpy(case.reference.astype(np.float32))[None]
        embeds, _ = self.node("HyperSubjectEncode", hypernet=net, image=image, combine="mean", on_bad_input="error")
        (lora,) = self.node("HyperSubjectPredictLoRA", hypernet=net, subject=embeds)
        seconds = time.perf_counter() - started
        return self.node("HyperSubjectApplyLoRA", model=self.model, subject_lora=lora, strength=1.0)[0], seconds

    def node(self, node_id: str, **inputs) -> tuple:
        """Execute one of this pack's nodes; its outputs."""
        return self.pack[node_id].execute(**inputs).args

    @torch.inference_mode()
    def stock_lora(self, lora_state: dict) -> object:
        """A LoRA file's state dict through ComfyUI's own loader (what LoraLoaderModelOnly does with the file)."""
        import comfy.sd

        return comfy.sd.load_lora_for_models(self.model, None, lora_state, 1.0, 0.0)[0]
