"""Checking a reference upload before it is stored.

The declared content type and file name are the client's word; what counts is
what the bytes decode to. The header is read first and the pixel count checked
before any pixel is decoded, so a small file that declares enormous dimensions
(a decompression bomb) is refused without allocating its pixels.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from ourvidz.errors import InvalidArgument

# Decoded format -> (content type, file extension).
ACCEPTED = {
    "PNG": ("image/png", "png"),
    "JPEG": ("image/jpeg", "jpg"),
    "WEBP": ("image/webp", "webp"),
}


@dataclass(frozen=True)
class ImageInfo:
    content_type: str
    extension: str
    width: int
    height: int


def _refuse(message: str) -> InvalidArgument:
    return InvalidArgument.field("file", message)


def inspect_image(data: bytes, *, max_bytes: int, max_pixels: int) -> ImageInfo:
    """Decode `data` fully and describe it, or raise InvalidArgument(file)."""
    if not data:
        raise _refuse("is empty")
    if len(data) > max_bytes:
        raise _refuse(f"is larger than the limit of {max_bytes // (1024 * 1024)} MiB")
    with warnings.catch_warnings():
        # Pillow's own bomb check warns below its error threshold; ours is stricter.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as probe:
                fmt = probe.format
                width, height = probe.size
                if fmt not in ACCEPTED:
                    raise _refuse("must be a PNG, JPEG or WebP image")
                if width <= 0 or height <= 0:
                    raise _refuse("has no pixels")
                if width * height > max_pixels:
                    raise _refuse(
                        f"has {width}x{height} pixels, more than the limit of {max_pixels}"
                    )
                probe.verify()
            # verify() leaves the image unusable; decode a fresh one in full.
            with Image.open(io.BytesIO(data)) as image:
                image.load()
        except InvalidArgument:
            raise
        except Image.DecompressionBombError as exc:
            raise _refuse("declares more pixels than the limit") from exc
        except UnidentifiedImageError as exc:
            raise _refuse("is not an image (PNG, JPEG or WebP expected)") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise _refuse("could not be decoded as an image") from exc
    content_type, extension = ACCEPTED[fmt]
    return ImageInfo(content_type=content_type, extension=extension, width=width, height=height)
