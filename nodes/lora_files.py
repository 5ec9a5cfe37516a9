"""Where Save Predicted LoRA may write: safe names inside models/loras/, never over an existing file."""
import re
import unicodedata
from pathlib import Path, PureWindowsPath

MAX_PART = 100
WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
ALLOWED = re.compile(r"^[\w\- .()+]+$")  # \w is Unicode-aware: letters and digits of any script


def check_part(part: str, what: str, whole: str | None = None) -> str:
    """One path component (of `whole`): letters, digits, ' -_.()+', no leading dot, not a Windows device name,
    ≤ 100 chars."""
    part = unicodedata.normalize("NFC", part).strip()
    problem = None
    if not part or part in (".", ".."):
        problem = "it is empty or a relative-path step"
    elif not ALLOWED.match(part):
        problem = "it holds a character other than letters, digits, spaces and - _ . ( ) +"
    elif part.startswith("."):
        problem = "it starts with a dot"
    elif part.split(".")[0].lower() in WINDOWS_RESERVED:
        problem = "it is a reserved device name on Windows"
    elif len(part) > MAX_PART:
        problem = f"it is {len(part)} characters long (at most {MAX_PART})"
    if problem:
        named = f"{what} {part!r}" if whole in (None, part) else f"{what} {whole!r} (its part {part!r})"
        raise ValueError(f"the {named} cannot be used because {problem}: choose a plain name such as "
                         f"'my_subject'; files are always written inside models/loras/")
    return part


def lora_destination(loras_dir: str, name: str, subfolder: str = "") -> Path:
    """The first free path `<loras>/<subfolder>/<name>[_NNN].safetensors`; names that would escape are refused."""
    name = name.strip()
    if name.lower().endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    stem = check_part(name, "LoRA name")
    if subfolder.strip().startswith(("/", "\\")) or PureWindowsPath(subfolder.strip()).drive:
        raise ValueError(f"the subfolder {subfolder!r} is an absolute path, but a folder inside models/loras/ is "
                         f"expected: give it relative to models/loras/, such as 'hypersubject' or 'people/alice' "
                         f"('' for models/loras/ itself)")
    parts = [check_part(p, "subfolder", subfolder) for p in re.split(r"[\\/]", subfolder)] if subfolder.strip() else []
    folder = Path(loras_dir).resolve().joinpath(*parts)
    if Path(loras_dir).resolve() not in (folder, *folder.parents):
        raise ValueError(f"the subfolder {subfolder!r} points outside models/loras/; use a plain folder name")
    candidates = [folder / f"{stem}.safetensors", *(folder / f"{stem}_{n:03d}.safetensors" for n in range(1, 1000))]
    for path in candidates:
        if not path.exists():
            return path
    raise FileExistsError(f"{folder} already holds {stem}.safetensors and 999 numbered copies: choose another name")
