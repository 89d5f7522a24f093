"""MAGVIT-v2 (Show-o's architecture, `showlab/magvitv2` layout): images <-> 8192-code token grids."""

from pipeline.image_tokenizer.magvit import DEFAULT_ID, MagvitV2, encode_blank_image
from pipeline.image_tokenizer.model import MagvitV2Config

__all__ = ["DEFAULT_ID", "MagvitV2", "MagvitV2Config", "encode_blank_image"]
