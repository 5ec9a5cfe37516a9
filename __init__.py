"""HyperSubject for ComfyUI: one image of a subject -> a LoRA in one forward pass, and HM-CFG sampling."""
from comfy_api.latest import ComfyExtension, io

from .nodes import NODES


class HyperSubjectExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> HyperSubjectExtension:
    return HyperSubjectExtension()
