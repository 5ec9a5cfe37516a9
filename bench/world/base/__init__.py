"""The miniature world's base model: a TAESD, a frozen random CLIP-L and a small SD1.5-family UNet (README.md)."""
