"""HM-CFG: ε̂ = u + s_text·(c − u) + s_subject·(p − c), and its fold into ComfyUI's stock CFG."""
import pytest
import torch

from hypernet import fold_hm_cfg, fold_into_cond, hm_cfg


@pytest.fixture
def eps():
    u, c, p = torch.randn(3, 2, 4, 8, 8)
    return u, c, p


def test_s_subject_zero_is_bit_identical_to_comfyui_cfg_even_with_a_non_finite_personalized_prediction(eps, comfy_root):
    import comfy.samplers

    u, c, p = eps
    x = torch.randn_like(u)
    stock = comfy.samplers.cfg_function(None, c, u, 7.5, x, torch.ones(2), model_options={})
    assert torch.equal(hm_cfg(u, c, p, 7.5, 0.0), stock)
    assert torch.equal(hm_cfg(u, c, torch.full_like(p, float("nan")), 7.5, 0.0), stock)


def test_equal_scales_give_cfg_between_the_base_uncond_and_the_personalized_cond(eps):
    u, c, p = (e.double() for e in eps)
    assert torch.allclose(hm_cfg(u, c, p, 5.0, 5.0), u + 5.0 * (p - u), rtol=0, atol=1e-12)


@pytest.mark.parametrize("s_text, s_subject", [(7.5, 3.0), (1.0, 2.5), (4.0, -1.0)])
def test_folding_the_subject_term_into_the_cond_reproduces_hm_cfg_through_stock_cfg(eps, s_text, s_subject):
    u, c, p = (e.double() for e in eps)
    folded = fold_into_cond(c, p, s_text, s_subject)
    assert torch.allclose(u + (folded - u) * s_text, hm_cfg(u, c, p, s_text, s_subject), rtol=0, atol=1e-12)
    assert not torch.allclose(hm_cfg(u, c, p, s_text, s_subject), hm_cfg(u, c, p, s_text, 0.0))


def test_folding_refuses_a_subject_term_when_cfg_is_zero(eps):
    u, c, p = eps
    assert torch.equal(fold_into_cond(c, p, 0.0, 0.0), c)
    with pytest.raises(ValueError, match="s_text \\(cfg\\) is 0 and s_subject is 2.0"):
        fold_into_cond(c, p, 0.0, 2.0)


@pytest.mark.parametrize("s_text, s_subject", [(7.5, 3.0), (0.0, 2.0), (0.0, 0.0)])
def test_fold_hm_cfg_routes_hm_cfg_through_stock_cfg_for_every_s_text_including_zero(eps, s_text, s_subject):
    u, c, p = (e.double() for e in eps)
    cond, uncond = fold_hm_cfg(u, c, p, s_text, s_subject)
    assert torch.allclose(uncond + (cond - uncond) * s_text, hm_cfg(u, c, p, s_text, s_subject), rtol=0, atol=1e-12)
