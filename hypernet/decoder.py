"""Weight decoder: learned queries, one per (target layer, factor, rank row), cross-attend to the image tokens;
linear heads shared by all targets of one feature size turn each query into one row of one LoRA factor.

Why this shape: SDXL has 560 attention targets, so a flat head d_model → Σ r·(in+out) would need 5.8M outputs at
rank 4 (1.5B weights at d_model 256). Here a query emits one down row (length `in`) or one up column (length `out`)
through a head chosen by (role, size); SD1.5 and SDXL need only 5–7 heads, so parameters stay nearly flat in the
number of targets and the rank, while compute grows linearly (T·2·r queries). Targets differ by their query embedding,
rank rows by a rank embedding. Up heads start at exactly zero, so an untrained net predicts ΔW = 0 (the usual LoRA
init: training starts from the base model); down heads start like a standard LoRA down (std 1/√in).
"""
import math

import torch
from torch import Tensor, nn

from .config import HyperNetConfig

ROLES = ("down", "up")


class DecoderLayer(nn.Module):
    """Pre-norm cross-attention from the queries to the image tokens, then a pre-norm MLP."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int):
        super().__init__()
        self.norm_attn = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(),
                                 nn.Linear(mlp_ratio * d_model, d_model))

    def forward(self, queries: Tensor, memory: Tensor) -> Tensor:
        h = self.norm_attn(queries)
        queries = queries + self.attn(h, memory, memory, need_weights=False)[0]
        return queries + self.mlp(self.norm_mlp(queries))


class WeightDecoder(nn.Module):
    """Image tokens [K, N, token_dim] → LoRA factors: down [K, r, in] and up [K, out, r] per target name."""

    def __init__(self, config: HyperNetConfig):
        super().__init__()
        d, r, n_targets = config.d_model, config.rank, len(config.targets)
        self.rank = r
        self.token_in = nn.Sequential(nn.LayerNorm(config.encoder.token_dim), nn.Linear(config.encoder.token_dim, d))
        # unit-variance query sum, so queries start distinct at the scale of the residual updates
        self.target_emb = nn.Parameter(torch.randn(n_targets, d) / math.sqrt(3))
        self.role_emb = nn.Parameter(torch.randn(len(ROLES), d) / math.sqrt(3))
        self.rank_emb = nn.Parameter(torch.randn(r, d) / math.sqrt(3))
        self.layers = nn.ModuleList(DecoderLayer(d, config.n_heads, config.mlp_ratio) for _ in range(config.n_layers))
        self.norm_out = nn.LayerNorm(d)

        groups = {}  # head key → indices of its targets
        for t, target in enumerate(config.targets):
            groups.setdefault(f"down_{target.in_features}", []).append(t)
            groups.setdefault(f"up_{target.out_features}", []).append(t)
        self.heads = nn.ModuleDict()
        self.group_names = {}
        for key, members in sorted(groups.items()):
            role, size = key.split("_")
            head = nn.Linear(d, int(size), bias=False)
            if role == "up":
                nn.init.zeros_(head.weight)
            else:
                nn.init.normal_(head.weight, std=1 / math.sqrt(d * int(size)))
            self.heads[key] = head
            self.group_names[key] = [config.targets[t].name for t in members]
            # query (t, role, j) sits at (t·2 + role)·r + j
            index = [(t * len(ROLES) + ROLES.index(role)) * r + j for t in members for j in range(r)]
            self.register_buffer(f"index_{key}", torch.tensor(index, dtype=torch.long), persistent=False)

    def forward(self, tokens: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        memory = self.token_in(tokens.to(self.target_emb))
        k, d = tokens.shape[0], self.target_emb.shape[1]
        queries = self.target_emb[:, None, None] + self.role_emb[None, :, None] + self.rank_emb[None, None]
        h = queries.reshape(1, -1, d).expand(k, -1, -1)
        for layer in self.layers:
            h = layer(h, memory)
        h = self.norm_out(h)
        down, up = {}, {}
        for key, head in self.heads.items():
            names = self.group_names[key]
            rows = head(h[:, getattr(self, f"index_{key}")]).view(k, len(names), self.rank, -1)
            for name, factor in zip(names, rows.unbind(1)):
                if key.startswith("down"):
                    down[name] = factor  # [K, r, in]
                else:
                    up[name] = factor.transpose(1, 2)  # [K, out, r]
        return down, up
