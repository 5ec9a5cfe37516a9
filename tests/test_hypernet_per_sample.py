"""PerSampleLoRA: each batch row runs with its own subject's LoRA, or none, exactly as if the LoRA were merged."""
import copy

import pytest
import torch
from torch import nn

from hypernet import EncoderSpec, HyperNet, HyperNetConfig, PerSampleLoRA, PredictedLoRA, Target, find_targets


class Attention(nn.Module):
    """Attention with ComfyUI's projection names (to_q, to_k, to_v, to_out.0)."""

    def __init__(self, dim: int, context_dim: int):
        super().__init__()
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.0))

    def forward(self, x, context):
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        weights = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)
        return self.to_out(weights @ v)


class Block(nn.Module):
    def __init__(self, dim: int, context_dim: int):
        super().__init__()
        self.attn1 = Attention(dim, dim)
        self.attn2 = Attention(dim, context_dim)
        self.ff = nn.Linear(dim, dim)

    def forward(self, x, context):
        x = x + self.attn1(x, x)
        x = x + self.attn2(x, context)
        return x + self.ff(x)


class TinyDiffusionModel(nn.Module):
    """Module names as under ComfyUI's diffusion_model: `input_blocks.1.1.transformer_blocks.0.attn2.to_k` …"""

    def __init__(self, dim: int = 12, context_dim: int = 10, dtype=torch.float64):
        super().__init__()
        self.proj_in = nn.Linear(dim, dim)
        self.input_blocks = nn.ModuleList([nn.ModuleList([nn.Identity()]),
                                           nn.ModuleList([nn.Identity(), nn.Module()])])
        self.input_blocks[1][1].transformer_blocks = nn.ModuleList(Block(dim, context_dim) for _ in range(2))
        self.to(dtype)

    def forward(self, x, context):
        x = self.proj_in(x)
        for block in self.input_blocks[1][1].transformer_blocks:
            x = block(x, context)
        return x


def random_lora(targets: list[Target], k: int, rank: int = 3, alpha: float = 2.0, dtype=torch.float64):
    down = {t.name: torch.randn(k, rank, t.in_features, dtype=dtype) for t in targets}
    up = {t.name: torch.randn(k, t.out_features, rank, dtype=dtype) / t.out_features ** 0.5 for t in targets}
    return PredictedLoRA(list(targets), down, up, rank=rank, alpha=alpha, family="sd15")


def merged(model: nn.Module, lora: PredictedLoRA, k: int, strength: float) -> nn.Module:
    """A copy of `model` with W + strength·scale·up_k·down_k written into every target weight."""
    merged_model = copy.deepcopy(model)
    with torch.no_grad():
        for target in lora.targets:
            merged_model.get_submodule(target.name.removeprefix("diffusion_model.")).weight += (
                strength * lora.delta(target.name, k))
    return merged_model


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture
def model_and_inputs():
    model = TinyDiffusionModel().requires_grad_(False)
    x = torch.randn(4, 5, 12, dtype=torch.float64)
    context = torch.randn(4, 7, 10, dtype=torch.float64)
    return model, x, context


def test_each_row_equals_the_model_with_its_subjects_lora_merged_and_unmarked_rows_equal_the_base(model_and_inputs):
    model, x, context = model_and_inputs
    targets = find_targets(model)
    assert len(targets) == 16
    lora = random_lora(targets, k=2)
    base = model(x, context)
    expected = {k: merged(model, lora, k, strength=0.7)(x, context) for k in range(2)}
    rows = [0, -1, 1, 0]

    with PerSampleLoRA(model, lora, strength=0.7) as psl:
        psl.rows = torch.tensor(rows)
        out = model(x, context)

    for b, k in enumerate(rows):
        if k == -1:
            assert torch.equal(out[b], base[b])
        else:
            assert relative_error(expected[k][b], base[b]) > 1e-2  # the LoRA does change this row
            assert relative_error(out[b], expected[k][b]) < 1e-6
    assert torch.equal(model(x, context), base)  # detached on exit


def test_rows_none_gives_row_i_subject_i_or_subject_zero_to_every_row(model_and_inputs):
    model, x, context = model_and_inputs
    targets = find_targets(model)
    lora4 = random_lora(targets, k=4)
    with PerSampleLoRA(model, lora4):
        out = model(x, context)
    for b in range(4):
        assert relative_error(out[b], merged(model, lora4, b, 1.0)(x, context)[b]) < 1e-6

    lora1 = random_lora(targets, k=1)
    with PerSampleLoRA(model, lora1):
        out = model(x, context)
    assert relative_error(out, merged(model, lora1, 0, 1.0)(x, context)) < 1e-6


def test_a_two_dimensional_input_and_float64_factors_on_a_float32_layer_work():
    model = nn.Module()
    model.head = nn.Linear(6, 3)
    targets = find_targets(model, pattern=r"^head$")
    lora = random_lora(targets, k=2)
    x = torch.randn(3, 6)
    with PerSampleLoRA(model, lora) as psl:
        psl.rows = [1, -1, 0]
        out = model.head(x)
    assert out.dtype == torch.float32
    expected = model.head(x) + torch.stack([x[0] @ lora.delta(targets[0].name, 1).float().T,
                                            torch.zeros(3), x[2] @ lora.delta(targets[0].name, 0).float().T])
    assert torch.allclose(out, expected, atol=1e-5)


def test_a_batch_that_differs_from_rows_is_refused_naming_the_layer(model_and_inputs):
    model, x, context = model_and_inputs
    with PerSampleLoRA(model, random_lora(find_targets(model), k=2)) as psl:
        psl.rows = [0, 1]
        with pytest.raises(ValueError, match=r"saw a batch of 4 rows but `rows` has 2"):
            model(x, context)
        psl.rows = None
        with pytest.raises(ValueError, match=r"2 subjects for a batch of 4"):
            model(x, context)
        with pytest.raises(ValueError, match=r"subject index in \[0, 2\)"):
            psl.rows = [0, 2, -1, 0]


def test_a_lora_for_another_model_is_refused_with_target_and_shapes(model_and_inputs):
    model, _, _ = model_and_inputs
    targets = find_targets(model)
    missing = [Target("diffusion_model.output_blocks.0.1.transformer_blocks.0.attn1.to_q", 12, 12)]
    with pytest.raises(ValueError, match=r"output_blocks\.0\.1.*another model"):
        PerSampleLoRA(model, random_lora(missing, k=1))
    resized = [Target(targets[0].name, 24, 12)]
    with pytest.raises(ValueError, match=r"\[12, 24\] but the model has \[12, 12\].*another model"):
        PerSampleLoRA(model, random_lora(resized, k=1))


def test_gradient_reaches_every_hypernet_parameter_and_never_the_frozen_model(model_and_inputs):
    model, x, context = model_and_inputs
    model.float()
    config = HyperNetConfig(family="sd15", targets=find_targets(model), rank=2, d_model=32, n_heads=2,
                            encoder=EncoderSpec("embedded", image_size=32, token_dim=16, width=8))
    net = HyperNet(config)
    images = torch.rand(2, 40, 36, 3)

    def loss():
        net.zero_grad()
        with PerSampleLoRA(model, net(net.encode(images))) as psl:
            psl.rows = [0, 1, -1, 1]
            return model(x.float(), context.float()).square().mean()

    loss().backward()  # untrained: up heads are zero, so only they can move first
    for key, head in net.decoder.heads.items():
        assert (head.weight.grad.abs().sum() > 0) == key.startswith("up"), key

    with torch.no_grad():
        for key, head in net.decoder.heads.items():
            if key.startswith("up"):
                head.weight.normal_(std=0.05)
    loss().backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.parameters())
