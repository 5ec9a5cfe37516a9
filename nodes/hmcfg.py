"""HM-CFG KSampler and HM-CFG Guider: base-model guidance for the prompt, personalized guidance for the subject."""
import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch
from comfy_api.latest import io

from .hmcfg_guider import HMCFGGuider
from .types import CATEGORY

S_TEXT_TIP = "Prompt guidance, as KSampler's cfg: the base model's (cond − uncond) is scaled by this."
S_SUBJECT_TIP = ("Subject guidance: (personalized − base) on the prompt is scaled by this. 0 is exactly the stock "
                 "KSampler on the base model; equal to s_text, the cond comes from the personalized model.")


def guidance_inputs() -> list:
    """The inputs both HM-CFG nodes share, in one order (widget order is API: never reorder)."""
    return [
        io.Model.Input("base_model", tooltip="The base model: follows the prompt. Other patches (e.g. RescaleCFG) "
                                             "stacked on it keep working."),
        io.Model.Input("personalized_model", tooltip="The base plus LoRAs on its Linear layers (Apply Predicted LoRA, "
                                                     "LoraLoader): fast, one batched UNet call per step. Any other "
                                                     "MODEL: correct, slower."),
        io.Conditioning.Input("positive", tooltip="The prompt."),
        io.Conditioning.Input("negative", tooltip="The negative prompt (the unconditional)."),
        io.Float.Input("s_text", default=5.0, min=0.0, max=100.0, step=0.1, round=0.01, tooltip=S_TEXT_TIP),
        io.Float.Input("s_subject", default=3.0, min=-100.0, max=100.0, step=0.1, round=0.01, tooltip=S_SUBJECT_TIP),
        io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                       tooltip="Fraction of the schedule where the subject term starts."),
        io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                       tooltip="Fraction of the schedule where the subject term ends."),
    ]


class HMCFGKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HMCFGKSampler",
            display_name="HM-CFG KSampler",
            category=CATEGORY,
            description="KSampler with Hybrid-Model CFG: u + s_text·(c − u) + s_subject·(p − c), where u and c come "
                        "from the base model and p from the personalized model.",
            inputs=[
                *guidance_inputs(),
                io.Latent.Input("latent_image", tooltip="The latent to denoise."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="The random seed used for creating the noise."),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Number of denoising steps."),
                io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES, tooltip="The sampling algorithm."),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, tooltip="The noise schedule."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="How much of the latent is replaced by noise (below 1 for img2img)."),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, base_model, personalized_model, positive, negative, s_text, s_subject, start_percent,
                end_percent, latent_image, seed, steps, sampler_name, scheduler, denoise) -> io.NodeOutput:
        if not torch.isfinite(latent_image["samples"]).all():
            raise ValueError("the latent_image holds NaN or infinite values, so every step would too: check the node "
                             "that made it (an empty latent comes from Empty Latent Image)")
        guider = HMCFGGuider(base_model, personalized_model, s_text, s_subject, start_percent, end_percent)
        guider.set_conds(positive, negative)
        latent = comfy.sample.fix_empty_latent_channels(base_model, latent_image["samples"])
        noise = comfy.sample.prepare_noise(latent, seed, latent_image.get("batch_index"))
        sigmas = comfy.samplers.KSampler(base_model, steps=steps, device=base_model.load_device, sampler=sampler_name,
                                         scheduler=scheduler, denoise=denoise,
                                         model_options=base_model.model_options).sigmas
        samples = guider.sample(noise, latent, comfy.samplers.sampler_object(sampler_name), sigmas,
                                denoise_mask=latent_image.get("noise_mask"),
                                callback=latent_preview.prepare_callback(base_model, steps),
                                disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        return io.NodeOutput({**latent_image, "samples": samples.to(comfy.model_management.intermediate_device())})


class HMCFGGuiderNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HMCFGGuider",
            display_name="HM-CFG Guider",
            category=CATEGORY,
            description="Hybrid-Model CFG as a GUIDER for SamplerCustomAdvanced.",
            inputs=guidance_inputs(),
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, base_model, personalized_model, positive, negative, s_text, s_subject, start_percent,
                end_percent) -> io.NodeOutput:
        guider = HMCFGGuider(base_model, personalized_model, s_text, s_subject, start_percent, end_percent)
        guider.set_conds(positive, negative)
        return io.NodeOutput(guider)


NODES = [HMCFGKSampler, HMCFGGuiderNode]
