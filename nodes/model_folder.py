"""The `models/hypersubject/` folder: registered with folder_paths (honours extra_model_paths.yaml entries)."""
import os

import folder_paths

from .types import MODEL_FOLDER


def register_model_folder() -> None:
    """Add models/hypersubject/ with model-file extensions only; keep any paths extra_model_paths.yaml gave it."""
    default = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    paths, extensions = folder_paths.folder_names_and_paths.get(MODEL_FOLDER, ([], set()))
    if default not in paths:
        paths = [*paths, default]
    # a folder registered by extra_model_paths.yaml comes with an empty extension set, which would list every file
    folder_paths.folder_names_and_paths[MODEL_FOLDER] = (paths, set(extensions) | {".safetensors"})


def hypernet_files() -> list[str]:
    return folder_paths.get_filename_list(MODEL_FOLDER)


def hypernet_path(name: str) -> str:
    return folder_paths.get_full_path_or_raise(MODEL_FOLDER, name)
