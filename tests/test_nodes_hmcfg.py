"""HM-CFG against its formula, stock-KSampler equality, its three paths, and compatibility with samplers and patches."""
import importlib
import logging
import re
from collections import Counter

import comfy.model_management
import comfy.samplers
import nodes
import pytest
import safetensors.torch
import torch

from hypernet import kohya_stem
from bench.harness.node_harness import conditioning, model_folder, one_step_denoised, predicted_lora, run

S_TEXT, S_SUBJECT = 4.0, 2.5


@pytest.fixture(scope="module")
def setup(pack, sd15, hypernet_files):
    model, clip, _ = sd15
    lora = predicted_lora(pack)
    (personalized,) = run(pack["HyperSubjectApplyLoRA"], model=model, subject_lora=lora, strength=1.0)
    return {"base": model, "personalized": personalized, "lora": lora,
            "positive": conditioning(clip, "a toy on a blue background"), "negative": conditioning(clip, "")}


def single_model_prediction(model, cond, sigma, shape=(1, 4, 8, 8)):
    """ε from one model and one cond alone (cfg 1 evaluates the cond only)."""
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(cond, cond)
    guider.set_cfg(1.0)
    return one_step_denoised(guider, sigma, shape=shape)


def formula_reference(setup, personalized, sigma, s_text=S_TEXT, s_subject=S_SUBJECT, base=None):
    u = single_model_prediction(base or setup["base"], setup["negative"], sigma)
    c = single_model_prediction(base or setup["base"], setup["positive"], sigma)
    p = single_model_prediction(personalized, setup["positive"], sigma)
    return u + s_text * (c - u) + s_subject * (p - c), (p - c).abs().max()


def hmcfg_prediction(setup, personalized, sigma, s_text=S_TEXT, s_subject=S_SUBJECT, fast=None, base=None):
    (guider,) = run(setup["pack_guider"], base_model=base or setup["base"], personalized_model=personalized,
                    positive=setup["positive"], negative=setup["negative"], s_text=s_text, s_subject=s_subject,
                    start_percent=0.0, end_percent=1.0)
    if fast is not None:
        assert guider.fast is fast
    return one_step_denoised(guider, sigma)


@pytest.fixture(autouse=True)
def _guider_class(setup, pack):
    setup["pack_guider"] = pack["HMCFGGuider"]


@pytest.mark.parametrize("sigma", [14.0, 1.0, 0.1])
def test_the_fast_path_equals_the_formula_from_three_separate_evaluations(setup, sigma):
    expected, subject_effect = formula_reference(setup, setup["personalized"], sigma)
    got = hmcfg_prediction(setup, setup["personalized"], sigma, fast=True)
    assert subject_effect > 1e-3, "the LoRA must change the prediction for this test to mean anything"
    assert (got - expected).abs().max() <= 1e-5 * max(1.0, expected.abs().max())


def random_lora_file(folder, name: str, unet, modules: list[str], seed: int, rank: int = 2, alpha: float = 1.0) -> str:
    """A kohya-named LoRA file on `modules` of `unet` (Linear or conv), random factors large enough to matter."""
    generator = torch.Generator().manual_seed(seed)
    weights = dict(unet.named_parameters())
    state = {}
    for module_name in modules:
        out_features, in_features, *kernel = weights[f"{module_name}.weight"].shape
        stem = kohya_stem(f"diffusion_model.{module_name}")
        state[f"{stem}.lora_down.weight"] = torch.randn(rank, in_features, *kernel, generator=generator) * 0.1
        state[f"{stem}.lora_up.weight"] = torch.randn(out_features, rank, *[1] * len(kernel), generator=generator) * 0.1
        state[f"{stem}.alpha"] = torch.tensor(alpha)
    safetensors.torch.save_file(state, str(folder / f"{name}.safetensors"))
    return f"{name}.safetensors"


def switching_path_prediction(setup, personalized, sigma, monkeypatch, base=None):
    """What the general path (a second evaluation, switching weights) gives for the same personalized MODEL."""
    guider_module = importlib.import_module(setup["pack_guider"].__module__.rsplit(".", 1)[0] + ".hmcfg_guider")
    with monkeypatch.context() as patch:
        patch.setattr(guider_module, "guidance_path", lambda *_: ("general", None))
        return hmcfg_prediction(setup, personalized, sigma, fast=False, base=base)


def modules_matching(unet, pattern: str) -> list[str]:
    return [name for name, _ in unet.named_modules() if re.search(pattern, name)]


@pytest.fixture()
def loras(tmp_path):
    with model_folder("loras", tmp_path) as folder:
        yield folder


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_a_saved_predicted_lora_through_the_stock_loraloader_takes_the_fast_path_and_equals_switching(
        setup, pack, loras, strength, monkeypatch, caplog):
    (name,) = run(pack["HyperSubjectSaveLoRA"], subject_lora=setup["lora"], name="subject", subfolder="")
    (stock_personalized,) = nodes.LoraLoaderModelOnly().load_lora_model_only(setup["base"], name, strength)
    expected, subject_effect = formula_reference(setup, stock_personalized, 1.0)
    with caplog.at_level(logging.INFO):
        got = hmcfg_prediction(setup, stock_personalized, 1.0, fast=True)
    switching = switching_path_prediction(setup, stock_personalized, 1.0, monkeypatch)
    assert subject_effect > 1e-3
    assert "HM-CFG: fast path" in caplog.text
    for reference in (expected, switching):
        assert (got - reference).abs().max() <= 1e-5 * max(1.0, reference.abs().max())


def test_style_loras_on_both_models_and_a_subject_lora_on_one_take_the_fast_path_and_equal_switching(
        setup, pack, loras, monkeypatch):
    unet = setup["base"].model.diffusion_model
    style = random_lora_file(loras, "style", unet, modules_matching(unet, r"attn1\.(to_q|to_v)$"), seed=1, rank=3,
                             alpha=1.5)
    second = random_lora_file(loras, "second", unet, modules_matching(unet, r"attn[12]\.to_q$"), seed=2)
    (subject,) = run(pack["HyperSubjectSaveLoRA"], subject_lora=setup["lora"], name="subject", subfolder="")
    (styled_base,) = nodes.LoraLoaderModelOnly().load_lora_model_only(setup["base"], style, 0.7)
    (personalized,) = nodes.LoraLoaderModelOnly().load_lora_model_only(styled_base, subject, 1.0)
    (personalized,) = nodes.LoraLoaderModelOnly().load_lora_model_only(personalized, second, -0.5)  # stacks on to_q
    expected, subject_effect = formula_reference(setup, personalized, 1.0, base=styled_base)
    got = hmcfg_prediction(setup, personalized, 1.0, fast=True, base=styled_base)
    switching = switching_path_prediction(setup, personalized, 1.0, monkeypatch, base=styled_base)
    unstyled, _ = formula_reference(setup, personalized, 1.0)
    assert subject_effect > 1e-3 and (unstyled - expected).abs().max() > 1e-3, "the style LoRA must matter"
    for reference in (expected, switching):
        assert (got - reference).abs().max() <= 1e-5 * max(1.0, reference.abs().max())


@pytest.mark.parametrize("repeat", range(4))  # which clone's weights are live once depended on set order
def test_a_lora_on_conv_layers_takes_the_general_path_and_equals_the_formula(setup, loras, repeat):
    unet = setup["base"].model.diffusion_model
    convs = [name.removesuffix(".weight") for name, p in unet.named_parameters() if p.ndim == 4 and p.shape[-1] == 3]
    conv = random_lora_file(loras, "conv", unet, convs[:2], seed=3)
    (personalized,) = nodes.LoraLoaderModelOnly().load_lora_model_only(setup["personalized"], conv, 1.0)
    base_before = single_model_prediction(setup["base"], setup["positive"], 1.0)
    expected, subject_effect = formula_reference(setup, personalized, 1.0)
    got = hmcfg_prediction(setup, personalized, 1.0, fast=False)
    assert subject_effect > 1e-3
    assert (got - expected).abs().max() <= 1e-5 * max(1.0, expected.abs().max())
    assert torch.equal(single_model_prediction(setup["base"], setup["positive"], 1.0), base_before)


def test_s_text_zero_still_adds_the_subject_term(setup):
    expected, _ = formula_reference(setup, setup["personalized"], 1.0, s_text=0.0, s_subject=1.5)
    got = hmcfg_prediction(setup, setup["personalized"], 1.0, s_text=0.0, s_subject=1.5)
    assert (got - expected).abs().max() <= 1e-5 * max(1.0, expected.abs().max())


def test_s_text_one_uses_the_cfg1_shortcut_and_still_matches(setup):
    expected, _ = formula_reference(setup, setup["personalized"], 1.0, s_text=1.0, s_subject=2.0)
    got = hmcfg_prediction(setup, setup["personalized"], 1.0, s_text=1.0, s_subject=2.0)
    assert (got - expected).abs().max() <= 1e-5 * max(1.0, expected.abs().max())


@pytest.mark.parametrize("s_text, rows", [(1.0, 2), (4.0, 3)])
def test_s_text_one_skips_the_unconditional_rows_on_the_fast_path(setup, s_text, rows):
    seen = []
    unet = setup["base"].model.diffusion_model
    handle = unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    try:
        hmcfg_prediction(setup, setup["personalized"], 1.0, s_text=s_text, s_subject=2.0, fast=True)
    finally:
        handle.remove()
    assert seen == [rows]  # one batched call: [cond, (uncond,) personalized cond]


def ksampler_inputs(setup, **overrides):
    latent = {"samples": torch.zeros(2, 4, 8, 8)}
    inputs = dict(seed=3, steps=4, sampler_name="euler", scheduler="normal", positive=setup["positive"],
                  negative=setup["negative"], latent_image=latent, denoise=1.0)
    inputs.update(overrides)
    return inputs


def hmcfg_ksampler(pack, setup, base=None, s_subject=S_SUBJECT, personalized=None, **overrides):
    (latent,) = run(pack["HMCFGKSampler"], base_model=base or setup["base"],
                    personalized_model=personalized or setup["personalized"], s_text=S_TEXT, s_subject=s_subject,
                    start_percent=0.0, end_percent=1.0, **ksampler_inputs(setup, **overrides))
    return latent["samples"]


def stock_ksampler(model, setup, **overrides):
    i = ksampler_inputs(setup, **overrides)
    with torch.inference_mode():
        return nodes.KSampler().sample(model, i["seed"], i["steps"], S_TEXT, i["sampler_name"], i["scheduler"],
                                       i["positive"], i["negative"], i["latent_image"], denoise=i["denoise"])[0]["samples"]


def test_s_subject_zero_is_bit_identical_to_the_stock_ksampler(pack, setup):
    assert torch.equal(hmcfg_ksampler(pack, setup, s_subject=0.0), stock_ksampler(setup["base"], setup))


def personalized_with_nothing_applied(pack, setup, why):
    """Apply Predicted LoRA's output when Encode Subject skipped every image (one flat colour), or at strength 0."""
    if why == "strength 0":
        return run(pack["HyperSubjectApplyLoRA"], model=setup["base"], subject_lora=setup["lora"], strength=0.0)[0]
    (net,) = run(pack["HyperSubjectLoader"], hypernet_name="tiny.safetensors")
    embeds, _ = run(pack["HyperSubjectEncode"], hypernet=net, image=torch.full((1, 64, 64, 3), 0.5), combine="mean",
                    on_bad_input="skip")
    (lora,) = run(pack["HyperSubjectPredictLoRA"], hypernet=net, subject=embeds)
    assert lora.lora is None, "the flat image should have been skipped"
    return run(pack["HyperSubjectApplyLoRA"], model=setup["base"], subject_lora=lora, strength=1.0)[0]


def counting_calls(monkeypatch) -> Counter:
    """Count (and still make) the calls that load models and that evaluate a batch of conds."""
    calls = Counter()
    for module, name in ((comfy.model_management, "load_models_gpu"), (comfy.samplers, "calc_cond_batch")):
        def counting(*args, _original=getattr(module, name), _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, counting)
    return calls


@pytest.mark.parametrize("why", ["every image skipped", "strength 0"])
def test_an_empty_lora_gives_exactly_the_stock_ksampler_with_no_extra_evaluations_or_model_switches(
        pack, setup, why, monkeypatch, caplog):
    personalized = personalized_with_nothing_applied(pack, setup, why)
    with monkeypatch.context() as patch, caplog.at_level(logging.INFO):
        hmcfg_calls = counting_calls(patch)
        hmcfg = hmcfg_ksampler(pack, setup, personalized=personalized)
    with monkeypatch.context() as patch:
        stock_calls = counting_calls(patch)
        stock = stock_ksampler(setup["base"], setup)
    assert torch.equal(hmcfg, stock)
    assert hmcfg_calls == stock_calls and stock_calls["calc_cond_batch"] == 4  # one per step, no switches
    assert "HM-CFG: base path" in caplog.text


def test_the_base_model_as_its_own_personalized_model_takes_the_base_path(pack, setup):
    (guider,) = run(pack["HMCFGGuider"], base_model=setup["base"], personalized_model=setup["base"],
                    positive=setup["positive"], negative=setup["negative"], s_text=S_TEXT, s_subject=S_SUBJECT,
                    start_percent=0.0, end_percent=1.0)
    plain = comfy.samplers.CFGGuider(setup["base"])
    plain.set_conds(setup["positive"], setup["negative"])
    plain.set_cfg(S_TEXT)
    assert guider.path == "base" and not guider.fast
    assert torch.equal(one_step_denoised(guider, 1.0), one_step_denoised(plain, 1.0))


def test_s_subject_zero_is_bit_identical_with_rescale_cfg_stacked_on_the_base(pack, setup):
    import comfy_extras.nodes_model_advanced as advanced

    (rescaled,) = advanced.RescaleCFG().patch(setup["base"], 0.7)
    assert torch.equal(hmcfg_ksampler(pack, setup, base=rescaled, s_subject=0.0), stock_ksampler(rescaled, setup))
    assert torch.isfinite(hmcfg_ksampler(pack, setup, base=rescaled)).all()


def test_the_base_model_is_unchanged_after_hmcfg_runs(pack, setup):
    before = single_model_prediction(setup["base"], setup["positive"], 1.0)
    hmcfg_ksampler(pack, setup)
    hmcfg_prediction(setup, setup["personalized"], 1.0)
    after = single_model_prediction(setup["base"], setup["positive"], 1.0)
    assert torch.equal(before, after)
    assert torch.equal(stock_ksampler(setup["base"], setup), stock_ksampler(setup["base"], setup))


def test_the_guider_with_sampler_custom_advanced_matches_the_hmcfg_ksampler(pack, setup):
    import comfy_extras.nodes_custom_sampler as custom

    (guider,) = run(pack["HMCFGGuider"], base_model=setup["base"], personalized_model=setup["personalized"],
                    positive=setup["positive"], negative=setup["negative"], s_text=S_TEXT, s_subject=S_SUBJECT,
                    start_percent=0.0, end_percent=1.0)
    with torch.inference_mode():
        sigmas = custom.BasicScheduler.execute(setup["base"], "normal", 4, 1.0).args[0]
        sampler = custom.KSamplerSelect.execute("euler").args[0]
        noise = custom.RandomNoise.execute(3).args[0]
        latent = custom.SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas,
                                                      {"samples": torch.zeros(2, 4, 8, 8)}).args[0]["samples"]
    assert torch.allclose(latent, hmcfg_ksampler(pack, setup), atol=1e-5)


def test_a_subject_window_limits_the_subject_term(pack, setup):
    full = hmcfg_ksampler(pack, setup)
    (windowed,) = run(pack["HMCFGKSampler"], base_model=setup["base"], personalized_model=setup["personalized"],
                      s_text=S_TEXT, s_subject=S_SUBJECT, start_percent=0.0, end_percent=0.0,
                      **ksampler_inputs(setup))
    assert torch.equal(windowed["samples"], stock_ksampler(setup["base"], setup))
    assert not torch.equal(full, windowed["samples"])


def test_denoise_below_one_and_a_batch_of_two_give_finite_distinct_latents(pack, setup):
    start = {"samples": torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))}
    out = hmcfg_ksampler(pack, setup, latent_image=start, denoise=0.5)
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()
    assert not torch.equal(out[0], out[1])


@pytest.mark.parametrize("sampler_name", comfy.samplers.SAMPLER_NAMES)
def test_every_stock_sampler_runs_with_hmcfg(pack, setup, sampler_name):
    out = hmcfg_ksampler(pack, setup, sampler_name=sampler_name, scheduler="karras", steps=3)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("scheduler", comfy.samplers.SCHEDULER_NAMES)
def test_every_stock_scheduler_runs_with_hmcfg(pack, setup, scheduler):
    assert torch.isfinite(hmcfg_ksampler(pack, setup, scheduler=scheduler, steps=3)).all()
