"""The HyperSubject checkpoint: one .safetensors file, tensors = HyperNet state dict, metadata = one JSON document.

Loading validates everything before building anything and never unpickles: a file is read only through safetensors.
"""
import io
import json
import logging
import os
import pickletools

import safetensors
import safetensors.torch
from torch import Tensor

from .config import HyperNetConfig
from .network import HyperNet

log = logging.getLogger(__name__)

FORMAT = "hypersubject"
FORMAT_VERSION = 1
METADATA_KEY = "hypersubject"
_PICKLE_PROTOCOLS = (b"\x02", b"\x03", b"\x04", b"\x05")  # a pickle starts with PROTO (0x80) + version
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default zip container
_PICKLE_PROBE_BYTES = 1 << 20  # protocol 0/1 pickles have no header: read this much looking for a complete one
_WHAT_TO_USE = ("use a HyperSubject .safetensors checkpoint (the trainer writes hypernet.safetensors into its output "
                "folder) and put it in models/hypersubject/")


class CheckpointError(ValueError):
    """A file that is not a loadable HyperSubject checkpoint; the message says expected, found and the fix."""


def write_atomic(path, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, fsync, rename: a kill at any moment leaves the old or the new file."""
    tmp = os.fspath(path) + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # only when writing or renaming failed
            os.remove(tmp)


def save(path: str, net: HyperNet, training: dict | None = None) -> None:
    """Write `net` (+ a free `training` dict) atomically: a temp file in the same folder, fsync, then rename."""
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": net.config.to_dict(),
           "training": training or {}}
    try:
        metadata = {METADATA_KEY: json.dumps(doc)}
    except TypeError as e:
        raise ValueError(f"the training dict must be JSON-serialisable: {e}") from e
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    data = safetensors.torch.save(tensors, metadata=metadata)
    write_atomic(path, data)
    log.info("saved hypernet checkpoint %s (%d tensors, %d bytes)", path, len(tensors), len(data))


def load(path: str, expect_family: str | None = None) -> tuple[HyperNet, dict]:
    """Validate and load a checkpoint onto the CPU; returns the net (eval mode) and the metadata document."""
    _check_header(path)
    try:
        with safetensors.safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it is probably truncated or "
                              f"corrupt: download or save it again") from e
    doc = _read_document(path, metadata)
    try:
        config = HyperNetConfig.from_dict(doc["config"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: the hypernet config in its metadata is invalid ({e}); the file is damaged or "
                              f"was written by an incompatible HyperSubject") from e
    if expect_family is not None and config.family != expect_family:
        raise CheckpointError(f"{path}: hypernet was trained for {config.family} but the MODEL is {expect_family}; "
                              f"load a {expect_family} hypernet or a {config.family} base checkpoint")
    net = HyperNet(config)
    try:
        tensors = safetensors.torch.load_file(path, device="cpu")
    except Exception as e:
        raise CheckpointError(f"{path}: could not read its tensors ({e}); the file is probably truncated: "
                              f"download or save it again") from e
    _check_tensors(path, net.state_dict(), tensors)
    net.load_state_dict(tensors, strict=True)
    return net.eval(), doc


def _check_header(path: str) -> None:
    """Refuse missing, empty, truncated, pickled or otherwise non-safetensors files by their first bytes."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no hypernet checkpoint at {path}: expected a .safetensors file there "
                              f"(put it in models/hypersubject/)")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(9)
    header_len = int.from_bytes(head[:8], "little")
    if size >= 10 and head[8:9] == b"{" and 8 + header_len <= size:
        return  # plausible safetensors: 8-byte little-endian header length, then a JSON header
    pickled = (f"{path} is a pickle (a PyTorch .pt/.ckpt or another Python pickle, perhaps renamed) but a safetensors "
               f"file is expected, and HyperSubject never unpickles files: {_WHAT_TO_USE}")
    if head.startswith(_ZIP_MAGIC) or (head[:1] == b"\x80" and head[1:2] in _PICKLE_PROTOCOLS):
        raise CheckpointError(pickled)
    if size < 10:
        raise CheckpointError(f"{path} is {size} bytes: expected a safetensors file (8-byte header length, then JSON); "
                              f"the file is empty or truncated, download or save it again")
    if head[8:9] == b"{":
        raise CheckpointError(f"{path} is truncated: its header claims {header_len} bytes but the file has {size}; "
                              f"download or save it again")
    if _is_pickle(path):  # protocols 0 and 1 start with no magic bytes
        raise CheckpointError(pickled)
    raise CheckpointError(f"{path} is not a safetensors file: expected an 8-byte header length and then JSON, found "
                          f"{head!r} at its start; {_WHAT_TO_USE}")


def _is_pickle(path: str) -> bool:
    """Whether the file starts with a complete pickle of any protocol. pickletools only parses the opcodes: nothing
    is imported or built."""
    with open(path, "rb") as f:
        probe = io.BytesIO(f.read(_PICKLE_PROBE_BYTES))
    try:
        return any(opcode.name == "STOP" for opcode, _, _ in pickletools.genops(probe))
    except ValueError:  # an unknown opcode, a bad argument or no STOP: not a pickle
        return False


def _read_document(path: str, metadata: dict) -> dict:
    """The HyperSubject JSON document of the metadata, checked for format and version."""
    if METADATA_KEY not in metadata:
        raise CheckpointError(f"{path} is a safetensors file but not a HyperSubject checkpoint: expected metadata key "
                              f"{METADATA_KEY!r}, found {sorted(metadata) or 'no metadata'}; if it is a LoRA, load it "
                              f"with LoraLoader instead")
    try:
        doc = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: its {METADATA_KEY!r} metadata is not valid JSON ({e}); the file is damaged"
                              ) from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise CheckpointError(f"{path}: expected format {FORMAT!r}, found {found!r}; not a HyperSubject checkpoint")
    version = doc.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: expected an integer format_version, found {version!r}; the file is damaged")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {version} but this HyperSubject reads up to "
                              f"{FORMAT_VERSION}: update HyperSubject")
    return doc


def _check_tensors(path: str, expected: dict[str, Tensor], found: dict[str, Tensor]) -> None:
    """Same tensor names and shapes as the net its config describes."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    shapes = [f"{k}: expected {list(expected[k].shape)}, found {list(found[k].shape)}"
              for k in sorted(set(expected) & set(found)) if expected[k].shape != found[k].shape]
    if missing or extra or shapes:
        parts = [f"missing tensors {missing[:5]}" * bool(missing), f"unexpected tensors {extra[:5]}" * bool(extra),
                 f"shape mismatches {shapes[:5]}" * bool(shapes)]
        raise CheckpointError(f"{path}: tensors do not match the architecture in its metadata "
                              f"({'; '.join(p for p in parts if p)}); the file is damaged or was edited: "
                              f"save it again from the trainer")
