"""Per-sample LoRA: forward hooks that add a different LoRA (or none) to each batch row, leaving weights untouched.

One mechanism serves the trainer (row i carries subject i) and HM-CFG (personalized rows carry the LoRA, base rows
none), so both compute y = W·x + strength·(alpha/r)·up[k]·down[k]·x exactly like a merged LoRA would.
"""
import torch
from torch import Tensor, nn

from .lora import PredictedLoRA
from .targets import PREFIX, Target


class PerSampleLoRA:
    """Forward hooks on every target layer of `root`; `rows[b]` = subject of batch row b, or -1 for no LoRA."""

    def __init__(self, root: nn.Module, lora: PredictedLoRA, strength: float = 1.0, prefix_strip: str = PREFIX):
        self.lora = lora
        self.strength = strength
        self.modules = {t.name: _resolve(root, t, prefix_strip, lora.family) for t in lora.targets}
        self._handles = []
        self._rows = None
        self._plans = {}

    @property
    def rows(self) -> Tensor | None:
        """Subject index per batch row of the next forward (-1: no LoRA); None: row i ↔ subject i, or all subject 0."""
        return self._rows

    @rows.setter
    def rows(self, rows) -> None:
        self._plans = {}
        if rows is None:
            self._rows = None
            return
        rows = torch.as_tensor(rows)
        if rows.ndim != 1 or rows.dtype.is_floating_point or rows.dtype.is_complex or rows.dtype == torch.bool:
            raise ValueError(f"rows must be a 1-D integer tensor (one subject index per batch row), "
                             f"got dtype {rows.dtype} and shape {tuple(rows.shape)}")
        k = self.lora.num_subjects
        if rows.numel() and (rows.min() < -1 or rows.max() >= k):
            raise ValueError(f"rows must hold -1 (no LoRA) or a subject index in [0, {k}), got {rows.tolist()}")
        self._rows = rows.long()

    def attach(self) -> "PerSampleLoRA":
        """Register the forward hooks (idempotent)."""
        if not self._handles:
            self._handles = [m.register_forward_hook(self._hook(name)) for name, m in self.modules.items()]
        return self

    def detach(self) -> None:
        """Remove the forward hooks; the model computes its base output again."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "PerSampleLoRA":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def _plan(self, batch: int, device: torch.device, name: str) -> tuple[Tensor, Tensor]:
        """(batch rows that carry a LoRA, their subject index), cached per batch size and device."""
        key = (batch, device)
        if key not in self._plans:
            rows, k = self._rows, self.lora.num_subjects
            if rows is None:
                if k not in (1, batch):
                    raise ValueError(f"rows is None but the LoRA holds {k} subjects for a batch of {batch} at "
                                     f"{name}; set `rows` to say which subject (or -1) each batch row uses")
                rows = torch.zeros(batch, dtype=torch.long) if k == 1 else torch.arange(batch)
            elif rows.numel() != batch:
                raise ValueError(f"layer {name} saw a batch of {batch} rows but `rows` has {rows.numel()} entries; "
                                 f"set rows to one entry per batch row of the model call")
            sel = torch.nonzero(rows >= 0).squeeze(1)
            self._plans[key] = (sel.to(device), rows[sel].to(device))
        return self._plans[key]

    def _hook(self, name: str):
        """Forward hook adding the LoRA delta of each row's subject to that row of the output."""
        def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
            x = args[0]
            sel, subject = self._plan(x.shape[0], x.device, name)
            if sel.numel() == 0:
                return None
            down = self.lora.down[name].to(device=x.device, dtype=x.dtype)[subject]  # [S, r, in]
            up = self.lora.up[name].to(device=x.device, dtype=x.dtype)[subject]  # [S, out, r]
            every_row = sel.numel() == x.shape[0]
            xs = (x if every_row else x[sel]).reshape(sel.numel(), -1, x.shape[-1])  # [S, L, in]
            delta = torch.bmm(torch.bmm(xs, down.transpose(1, 2)), up.transpose(1, 2))  # [S, L, out]
            delta = (self.strength * self.lora.scale * delta).reshape(sel.numel(), *output.shape[1:])
            delta = delta.to(output.dtype)
            return output + delta if every_row else output.index_add(0, sel, delta)
        return hook


def _resolve(root: nn.Module, target: Target, prefix: str, family: str) -> nn.Module:
    """The module of `root` that `target` names, checked against the target's weight shape."""
    path = target.name[len(prefix):] if prefix and target.name.startswith(prefix) else target.name
    try:
        module = root.get_submodule(path)
    except AttributeError:
        raise ValueError(f"the predicted LoRA targets {target.name!r} but the model has no module {path!r}: the LoRA "
                         f"was predicted for another model ({family}); use a hypernet trained for this base model"
                         ) from None
    weight = getattr(module, "weight", None)
    expected = (target.out_features, target.in_features)
    found = None if weight is None else tuple(weight.shape)
    if found != expected:
        raise ValueError(f"target {target.name!r}: the LoRA expects a weight of shape [out, in] = {list(expected)} but "
                         f"the model has {found and list(found)}: the LoRA was predicted for another model ({family}); "
                         f"use a hypernet trained for this base model")
    return module
