import os
from pathlib import Path

import pytest
import torch

from bench.harness.comfy_runtime import comfyui_root, import_comfy


def files_under(folder: Path) -> set[str]:
    """Every file and folder below `folder`, as relative paths (symlinked folders are not entered)."""
    found = set()
    for parent, dirs, files in os.walk(folder):
        found.update(os.path.relpath(os.path.join(parent, name), folder) for name in (*dirs, *files))
    return found


COMFY_MODELS = comfyui_root() / "models"  # with HYPERSUBJECT_COMFYUI, the user's own models folder
COMFY_MODELS_BEFORE = files_under(COMFY_MODELS)  # taken before ComfyUI is even imported
COMFY_ROOT = import_comfy()  # before collection, so test modules may import comfy at the top


@pytest.fixture(scope="session", autouse=True)
def _comfyui_models_folder_is_left_as_found():
    """Tests and the benchmarks they call write only into temporary folders, never into ComfyUI's models/."""
    yield
    after = files_under(COMFY_MODELS)
    added, removed = sorted(after - COMFY_MODELS_BEFORE), sorted(COMFY_MODELS_BEFORE - after)
    assert not added and not removed, (f"the test session changed {COMFY_MODELS}: added {added[:10]}, removed "
                                       f"{removed[:10]}; write into a temporary folder (node_harness.model_folder)")


@pytest.fixture(scope="session")
def comfy_root():
    """ComfyUI imported in-process on the CPU; its root folder."""
    return COMFY_ROOT


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def checkpoints():
    """Tiny real checkpoints, built once per machine into .cache/checkpoints (cheap: about 3 s)."""
    from bench.harness.tiny_files import tiny_checkpoints

    return tiny_checkpoints()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """Trainer data: 4 subjects × 2 images of 64 px; with held_out = 1, 6 training images."""
    from test_train_data import write_subjects

    return write_subjects(tmp_path_factory.mktemp("subjects"))


@pytest.fixture(scope="session")
def server(tmp_path_factory, checkpoints):
    """A real ComfyUI server with this pack and the tiny checkpoints; stopped by PID at the end."""
    from bench.harness.comfy_server import ComfyServer

    instance = ComfyServer(tmp_path_factory.mktemp("comfyui"))
    for name in ("sd15_tiny.safetensors", "sd15_tiny_clip.safetensors"):
        (instance.base / "models" / "checkpoints" / name).symlink_to(checkpoints[name])
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture(scope="session")
def pack(comfy_root, tmp_path_factory):
    """This pack loaded by ComfyUI's own custom-node loader, in-process; its node classes by node id."""
    from bench.harness.node_harness import load_pack

    return load_pack(tmp_path_factory.mktemp("custom_nodes"))


@pytest.fixture(scope="session")
def sd15(comfy_root, checkpoints):
    """(MODEL, CLIP, VAE) of the tiny SD1.5-family checkpoint, through the stock loader."""
    import comfy.sd

    return comfy.sd.load_checkpoint_guess_config(str(checkpoints["sd15_tiny_clip.safetensors"]))[:3]


@pytest.fixture(scope="session")
def hypernet_files(pack, tmp_path_factory):
    """Tiny hypernets in a folder registered as models/hypersubject/: names → paths."""
    import folder_paths
    from bench.tiny_checkpoints import write_tiny_hypernet

    folder = tmp_path_factory.mktemp("hypersubject")
    folder_paths.add_model_folder_path("hypersubject", str(folder))
    return {"tiny.safetensors": write_tiny_hypernet(folder / "tiny.safetensors", seed=0),
            "tiny_flux.safetensors": write_tiny_hypernet(folder / "tiny_flux.safetensors", seed=2, family="flux"),
            "tiny_clip_vision.safetensors": write_tiny_hypernet(folder / "tiny_clip_vision.safetensors", seed=1,
                                                                encoder="clip_vision")}


@pytest.fixture(scope="session")
def served(server, hypernet_files):
    """The server with every tiny hypernet in models/hypersubject/ and two subject images in input/."""
    import shutil

    from PIL import Image

    from bench.harness.node_harness import subject_image

    folder = server.base / "models" / "hypersubject"
    folder.mkdir(exist_ok=True)
    for name, path in hypernet_files.items():
        shutil.copy(path, folder / name)
    for index, name in enumerate(("subject.png", "subject_2.png")):
        pixels = (subject_image(index, size=96)[0].numpy() * 255).astype("uint8")
        Image.fromarray(pixels).save(server.base / "input" / name)
    return server
