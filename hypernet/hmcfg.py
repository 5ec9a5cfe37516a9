"""Hybrid-Model CFG: base-model guidance for the prompt plus personalized-model guidance for the subject."""
from torch import Tensor


def hm_cfg(eps_uncond: Tensor, eps_cond: Tensor, eps_pers: Tensor, s_text: float, s_subject: float) -> Tensor:
    """ε̂ = u + s_text·(c − u) + s_subject·(p − c), with u, c from the base model and p from the personalized one."""
    cfg = eps_uncond + (eps_cond - eps_uncond) * s_text  # the operation order of ComfyUI's cfg_function
    if s_subject == 0:
        return cfg  # exactly plain CFG, even where p is not finite
    return cfg + s_subject * (eps_pers - eps_cond)


def fold_into_cond(eps_cond: Tensor, eps_pers: Tensor, s_text: float, s_subject: float) -> Tensor:
    """c' = c + (s_subject/s_text)·(p − c), so that stock CFG u + s_text·(c' − u) equals hm_cfg."""
    if s_subject == 0:
        return eps_cond
    if s_text == 0:
        raise ValueError(f"cannot fold the subject term into the conditional when s_text (cfg) is 0 and s_subject is "
                         f"{s_subject}; use cfg > 0 or compute hm_cfg directly")
    return eps_cond + (s_subject / s_text) * (eps_pers - eps_cond)


def fold_hm_cfg(eps_uncond: Tensor, eps_cond: Tensor, eps_pers: Tensor, s_text: float,
                s_subject: float) -> tuple[Tensor, Tensor]:
    """(c', u') such that stock CFG u' + s_text·(c' − u') equals hm_cfg, for every s_text including 0.

    With s_text ≠ 0 the subject term folds into the conditional; with s_text = 0 stock CFG returns u', so it folds
    into the unconditional instead: u' = u + s_subject·(p − c).
    """
    if s_text == 0:
        return eps_cond, eps_uncond + s_subject * (eps_pers - eps_cond)
    return fold_into_cond(eps_cond, eps_pers, s_text, s_subject), eps_uncond
