import pytest
import torch

from comfy_runtime import import_comfy


@pytest.fixture(scope="session")
def comfy_root():
    """ComfyUI imported in-process on the CPU; its root folder."""
    return import_comfy()


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def checkpoints():
    """Tiny real checkpoints, built once per machine into .cache/checkpoints (cheap: about 3 s)."""
    from tiny_files import tiny_checkpoints

    return tiny_checkpoints()


@pytest.fixture(scope="session")
def server(tmp_path_factory, checkpoints):
    """A real ComfyUI server with this pack and the tiny checkpoints; stopped by PID at the end."""
    from comfy_server import ComfyServer

    instance = ComfyServer(tmp_path_factory.mktemp("comfyui"))
    for name in ("sd15_tiny.safetensors", "sd15_tiny_clip.safetensors"):
        (instance.base / "models" / "checkpoints" / name).symlink_to(checkpoints[name])
    instance.start()
    yield instance
    instance.stop()
