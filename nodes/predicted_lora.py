"""Apply Predicted LoRA and Save Predicted LoRA: the predicted weights through ComfyUI's own LoRA paths."""
import datetime
import logging
import os

import folder_paths
import safetensors.torch
from comfy.weight_adapter.lora import LoRAAdapter
from comfy_api.latest import io, ui

from ..hypernet import PredictedLoRA, family_of, to_lora_state_dict
from .lora_files import lora_destination
from .types import CATEGORY, Lora, SubjectLoRA

log = logging.getLogger(__name__)

def check_family(model, lora: PredictedLoRA, net_name: str) -> None:
    found = family_of(model.model.diffusion_model)
    if found != lora.family:
        raise ValueError(f"the LoRA was predicted by the hypernet '{net_name}', which was trained for {lora.family} "
                         f"models, but the MODEL is {found}: load a {lora.family} checkpoint, or pick a HyperSubject "
                         f"hypernet trained for {found} in Load Subject Hypernet")


def comfy_patches(lora: PredictedLoRA) -> dict:
    """ComfyUI weight patches (key → LoRAAdapter) for subject 0, as `comfy.lora.load_lora` would make them."""
    return {f"{t.name}.weight": LoRAAdapter(set(), (lora.up[t.name][0], lora.down[t.name][0], lora.alpha,
                                                    None, None, None)) for t in lora.targets}


class ApplyPredictedLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HyperSubjectApplyLoRA",
            display_name="Apply Predicted LoRA",
            category=CATEGORY,
            description="Returns a copy of the MODEL with the predicted LoRA patched in (the input MODEL is unchanged).",
            inputs=[io.Model.Input("model", tooltip="The base model the hypernet was trained for."),
                    SubjectLoRA.Input("subject_lora", tooltip="From Predict LoRA."),
                    io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                                   tooltip="LoRA strength; 0 gives exactly the base model.")],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, subject_lora: Lora, strength: float) -> io.NodeOutput:
        personalized = model.clone()
        lora = subject_lora.lora if strength != 0 else None  # None: no usable subject image, or strength 0
        if lora is not None:
            check_family(model, lora, subject_lora.net_name)
            patches = comfy_patches(lora)
            matched = set(personalized.add_patches(patches, strength))
            if matched != set(patches):
                missing = sorted(set(patches) - matched)
                raise ValueError(f"the MODEL has no weights {missing[:3]}… ({len(missing)} of {len(patches)} LoRA "
                                 f"targets missing): the hypernet '{subject_lora.net_name}' was trained for another "
                                 f"{lora.family} architecture; load the checkpoint it was trained for")
        return io.NodeOutput(personalized)


class SavePredictedLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HyperSubjectSaveLoRA",
            display_name="Save Predicted LoRA",
            category=CATEGORY,
            description="Writes the predicted LoRA as a standard LoRA file into models/loras/ for the stock "
                        "LoraLoader. Never overwrites: a taken name gets a number.",
            inputs=[SubjectLoRA.Input("subject_lora", tooltip="From Predict LoRA."),
                    io.String.Input("name", default="hypersubject",
                                    tooltip="File name without extension: letters, digits, spaces, - _ . ( ) +."),
                    io.String.Input("subfolder", default="hypersubject", optional=True,
                                    tooltip="Folder inside models/loras/ ('' for models/loras/ itself).")],
            outputs=[io.String.Output(display_name="lora_name",
                                      tooltip="The saved file's name as LoraLoader lists it ('' if nothing saved).")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, subject_lora: Lora, name: str, subfolder: str = "") -> io.NodeOutput:
        loras_dir = folder_paths.get_folder_paths("loras")[0]
        path = lora_destination(loras_dir, name, subfolder)
        if subject_lora.lora is None:
            log.warning("Save Predicted LoRA: no subject LoRA (no usable image); nothing saved")
            return io.NodeOutput("", ui=ui.PreviewText("nothing saved: no usable subject image"))
        lora = subject_lora.lora
        metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(lora.rank),
                    "ss_network_alpha": str(lora.alpha), "hypersubject_base_family": lora.family,
                    "hypersubject_hypernet": subject_lora.net_name,
                    "hypersubject_source_image_sha256": subject_lora.source_hash,
                    "hypersubject_created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        data = safetensors.torch.save(to_lora_state_dict(lora.to("cpu")), metadata=metadata)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "xb") as file:  # "x": fail rather than overwrite, even if another run took the name
            file.write(data)
        saved = os.path.relpath(path, os.path.realpath(loras_dir)).replace(os.sep, "/")
        log.info("Save Predicted LoRA: wrote %s", path)
        return io.NodeOutput(saved, ui=ui.PreviewText(saved))


NODES = [ApplyPredictedLoRA, SavePredictedLoRA]
