"""Which colour each CLIP-L token carries, for a wording of the identity description.

    python -m bench.world.base.caption_tokens ["{body} and {second} toy" ...]

Every one of the 56 toys is described in two contexts and encoded by the world's random CLIP-L. For each token, an
additive least-squares fit (body colour + second colour + context, one-hot) splits its variance: the share only the
body colour explains, the share only the second colour explains, and what the fit leaves (interaction). Printed per
wording: the shares of the first colour word's own token, and their ranges over the tokens after the description
(the context's words), which is where a UNet reading by position finds both colours mixed.
"""
import argparse
from functools import cache

import torch
import torch.nn.functional as F

from ..contexts import all_contexts, prompt
from ..subjects import COLOURS, Subject, all_subjects, describe
from .common import import_comfy
from .train_unet import encode_texts

TODAYS_WORDING = describe(Subject(0, "{body}", "{second}"))  # `describe` as a template
WORDINGS = ("{body} and {second} toy", "{body} toy with a {second} right half",
            "{body} and {second} {second} {second} toy", TODAYS_WORDING)
CONTEXTS = (0, 41)  # two contexts with different backgrounds, positions and sizes


def variance_shares(cond: torch.Tensor, factors: list[torch.Tensor]) -> torch.Tensor:
    """(tokens, len(factors) + 1): per token, the variance share only each factor explains, then the residual."""
    def residual(columns: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        design = torch.cat(columns, 1)
        return ((x - design @ torch.linalg.lstsq(design, x).solution) ** 2).sum()

    rows = []
    for x in cond.transpose(0, 1):
        total = ((x - x.mean(0)) ** 2).sum().clamp_min(1e-12)
        full = residual(factors, x)
        rows.append([(residual(factors[:i] + factors[i + 1:], x) - full) / total for i in range(len(factors))]
                    + [full / total])
    return torch.tensor(rows)


@cache
def clip_tokenizer():
    """The CLIP-L BPE tokenizer ComfyUI's SD1.5 text encoder uses."""
    from comfy.sd1_clip import SDTokenizer

    return SDTokenizer().tokenizer


def token_count(text: str) -> int:
    """Tokens of `text` without the start and end tokens."""
    return len(clip_tokenizer()(text)["input_ids"]) - 2


def report(wording: str, clip_seed: int = 0) -> str:
    """One line per wording: first colour token's shares, then ranges after the description."""
    colours, contexts = list(COLOURS), [all_contexts()[i] for i in CONTEXTS]
    pairs = [(s, c) for s in all_subjects() for c in range(len(contexts))]
    texts = [prompt(contexts[c], wording.format(body=s.body, second=s.second)) for s, c in pairs]
    bodies, seconds = [colours.index(s.body) for s, _ in pairs], [colours.index(s.second) for s, _ in pairs]
    factors = [F.one_hot(torch.tensor(values), n).float() for values, n in
               ((bodies, len(colours)), (seconds, len(colours)), ([c for _, c in pairs], len(contexts)))]
    example = all_subjects()[0]
    described = prompt(contexts[0], wording.format(body=example.body, second=example.second)).split(" on a ")[0]
    first, end = token_count("a") + 1, token_count(described) + 1
    shares = 100 * variance_shares(encode_texts(texts, clip_seed), factors)
    after = shares[end:min(token_count(text) for text in texts[:len(contexts)]) + 1]
    spans = " / ".join(f"{after[:, k].min():.0f}–{after[:, k].max():.0f}" for k in (0, 1, 3))
    return (f"{wording!r}: first colour's token {shares[first, 0]:.0f} % body; "
            f"tokens after the description: body / second / interaction {spans} %")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wordings", nargs="*", default=list(WORDINGS), help="with {body} and {second}")
    args = parser.parse_args(argv)
    import_comfy()
    for wording in args.wordings:
        print(report(wording), flush=True)


if __name__ == "__main__":
    main()
