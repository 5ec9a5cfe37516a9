"""The HM-CFG guider: base-model CFG plus s_subject·(ε_pers − ε_base) on the prompt (design.md, "HM-CFG").

Fast path, when the personalized MODEL is the base plus LoRAs on Linear layers (Apply Predicted LoRA, or the stock
LoraLoader with any files at any strength; `lora_patches`): those LoRAs are never merged; a copy of the positive cond
with its own uuid marks the personalized rows, and [cond, uncond, personalized cond] run in ONE batched UNet call
with the LoRAs per sample on the marked rows (comfyui-runtime.md §2.2, option iv).
General path, for any other personalized MODEL: a second evaluation, switching the loaded weights with
`load_models_gpu` each time, since two clones of one module cannot both be patched at once (§2.2, option i).
Base path, when the personalized MODEL adds nothing to the base (no usable subject image, strength 0, or the base
itself): p = c, so HM-CFG is plain CFG on the base, evaluated exactly as the stock KSampler does.
The recombination itself is the pure function `hypernet.fold_hm_cfg`; ComfyUI's own `sampling_function` still
runs, so pre/post-CFG hooks, sampler_cfg_function patches (RescaleCFG) and CFG++ samplers keep working.
"""
import logging
import uuid

import comfy.model_management
import comfy.patcher_extension
import comfy.samplers
import torch

from ..hypernet import PerSampleLoRA, PredictedLoRA, fold_hm_cfg
from .lora_patches import added_linear_lora

log = logging.getLogger(__name__)

PERSONALIZED = uuid.UUID("5d0f9a52-6a43-4a8e-9a55-0b4bd3b4c6a1")  # namespace of the personalized cond copies
PATHS = {"fast": "fast path: the personalized MODEL's LoRAs on the personalized rows of one batched UNet call per step",
         "general": "general path: a second evaluation of the personalized MODEL per step, switching weights",
         "base": "base path: the personalized MODEL adds nothing to the base, so plain CFG on the base"}


def guidance_path(base, personalized) -> tuple[str, PredictedLoRA | None]:
    """('fast', its LoRA) if `personalized` is `base` plus LoRAs on Linear layers, ('base', None) if it adds nothing,
    else ('general', None)."""
    added = added_linear_lora(base, personalized)
    if added is None:
        return "general", None
    return ("fast", added) if added.targets else ("base", None)


class HMCFGGuider(comfy.samplers.CFGGuider):
    """CFGGuider on the base model whose prediction is u + s_text(c − u) + s_subject(p − c) inside a sigma window."""

    def __init__(self, base, personalized, s_text: float, s_subject: float, start_percent: float = 0.0,
                 end_percent: float = 1.0):
        self.path, added = guidance_path(base, personalized)
        model = base.clone()
        self.per_sample = None
        if self.path == "fast":
            self.per_sample = PerSampleLoRA(model.model.diffusion_model, added)
            self.marked_uuids = set()
            model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "hypersubject_hmcfg",
                                       self._apply_model_with_rows)
        # On the general path `personalized` is not an additional model: loading both clones of one UNet together
        # leaves either patch set live, so it is loaded in turn with the base (_personalized_prediction).
        log.info("HM-CFG: %s%s", PATHS[self.path], f" ({len(added.targets)} layers)" if self.fast else "")
        super().__init__(model)
        self.personalized = personalized
        self.s_text, self.s_subject = s_text, s_subject
        sampling = base.get_model_object("model_sampling")
        self.sigma_start = float(sampling.percent_to_sigma(start_percent))
        self.sigma_end = float(sampling.percent_to_sigma(end_percent))
        self.set_cfg(s_text)

    @property
    def fast(self) -> bool:
        return self.per_sample is not None

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        sigma = float(timestep.max())
        if self.s_subject == 0 or self.path == "base" or not self.sigma_end <= sigma <= self.sigma_start:
            return super().predict_noise(x, timestep, model_options, seed)
        options = {**model_options, "sampler_calc_cond_batch_function": self._evaluate}
        return comfy.samplers.sampling_function(self.inner_model, x, timestep, self.conds.get("negative"),
                                                self.conds.get("positive"), self.cfg, model_options=options, seed=seed)

    def _evaluate(self, args: dict) -> list:
        """[cond', uncond'] that ComfyUI's CFG formula turns into HM-CFG."""
        (cond, uncond), x, sigma = args["conds"], args["input"], args["sigma"]
        model, options = args["model"], args["model_options"]
        if self.fast:
            marked = [{**c, "uuid": uuid.uuid5(PERSONALIZED, str(c["uuid"]))} for c in cond]
            self.marked_uuids = {c["uuid"] for c in marked}
            eps_cond, eps_uncond, eps_pers = comfy.samplers.calc_cond_batch(model, [cond, uncond, marked], x,
                                                                            sigma, options)
        else:
            eps_cond, eps_uncond = comfy.samplers.calc_cond_batch(model, [cond, uncond], x, sigma, options)
            eps_pers = self._personalized_prediction(cond, x, sigma)
        return list(fold_hm_cfg(eps_uncond, eps_cond, eps_pers, self.s_text, self.s_subject))

    def _apply_model_with_rows(self, executor, x, t, c_concat=None, c_crossattn=None, control=None,
                               transformer_options={}, **kwargs):
        """Attach the per-sample LoRA for this call only, on the rows of the marked (personalized) cond chunks."""
        chunks = transformer_options.get("uuids", [])
        marked = [chunk in self.marked_uuids for chunk in chunks]
        if not any(marked):
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        rows_per_chunk = x.shape[0] // len(chunks)
        self.per_sample.rows = torch.tensor(marked).long().sub(1).repeat_interleave(rows_per_chunk)
        with self.per_sample:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    def _personalized_prediction(self, cond, x, sigma):
        """ε_pers from the personalized MODEL, loading its weights for this call and the base's again after."""
        comfy.model_management.load_models_gpu([self.personalized])
        self.personalized.pre_run()
        try:
            return comfy.samplers.calc_cond_batch(self.personalized.model, [cond], x, sigma,
                                                  self.personalized.model_options)[0]
        finally:
            comfy.model_management.load_models_gpu([self.model_patcher])
            self.model_patcher.pre_run()
