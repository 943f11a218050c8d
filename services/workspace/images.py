"""Checking and re-encoding a reference upload before it is stored.

The declared content type and file name are the client's word; what counts is
what the bytes decode to. The header is read first and the pixel count checked
before any pixel is decoded, so a small file that declares enormous dimensions
(a decompression bomb) is refused without allocating its pixels.

What is stored is never the uploaded file itself but a fresh encoding of its
decoded pixels, so nothing but the picture survives: no trailing data (a zip or
an HTML page appended to a valid image), no EXIF (GPS position, camera, orientation),
XMP, text chunks or comments. The picture still looks the same:

- the EXIF orientation is applied first, so width and height are those shown;
- an embedded colour profile is converted to sRGB, then dropped;
- pixels become RGB, or RGBA when the image has transparency (PNG and WebP).

The output format keeps the kind of compression the user chose, so a photo does
not grow tenfold and a drawing loses nothing:

- PNG -> PNG (lossless: the same pixels);
- JPEG -> JPEG at quality 95 without chroma subsampling;
- WebP -> WebP, lossless when the upload was lossless, else quality 95.

Animated or multi-frame images are refused rather than cut to their first frame:
a reference is one picture, and a silent change would surprise the user.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from ourvidz.errors import InvalidArgument

# Decoded format -> (content type, file extension) of what is written.
ACCEPTED = {
    "PNG": ("image/png", "png"),
    "JPEG": ("image/jpeg", "jpg"),
    "WEBP": ("image/webp", "webp"),
}
JPEG_QUALITY = 95
WEBP_QUALITY = 95

_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@dataclass(frozen=True)
class CleanImage:
    """A re-encoded upload: the bytes to store and what they are."""

    data: bytes
    content_type: str
    extension: str
    width: int
    height: int


def _refuse(message: str) -> InvalidArgument:
    return InvalidArgument.field("file", message)


def reencode_image(data: bytes, *, max_bytes: int, max_pixels: int) -> CleanImage:
    """Decode `data`, check it, and encode its pixels afresh; or raise
    InvalidArgument(file) when it is not one acceptable image."""
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
                if getattr(probe, "n_frames", 1) > 1:
                    raise _refuse("is animated or has several frames; one still image expected")
                probe.verify()
            # verify() leaves the image unusable; decode a fresh one in full.
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                pixels = _clean_pixels(image, keep_alpha=fmt != "JPEG")
        except InvalidArgument:
            raise
        except Image.DecompressionBombError as exc:
            raise _refuse("declares more pixels than the limit") from exc
        except UnidentifiedImageError as exc:
            raise _refuse("is not an image (PNG, JPEG or WebP expected)") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise _refuse("could not be decoded as an image") from exc
    content_type, extension = ACCEPTED[fmt]
    out = io.BytesIO()
    if fmt == "PNG":
        pixels.save(out, format="PNG")
    elif fmt == "JPEG":
        pixels.save(out, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    elif _webp_is_lossless(data):
        pixels.save(out, format="WEBP", lossless=True)
    else:
        pixels.save(out, format="WEBP", quality=WEBP_QUALITY)
    return CleanImage(
        data=out.getvalue(),
        content_type=content_type,
        extension=extension,
        width=pixels.width,
        height=pixels.height,
    )


def _clean_pixels(image: Image.Image, *, keep_alpha: bool) -> Image.Image:
    """The picture as shown, in RGB(A), carrying no metadata at all."""
    icc = image.info.get("icc_profile")
    ImageOps.exif_transpose(image, in_place=True)
    alpha = keep_alpha and image.has_transparency_data
    mode = "RGBA" if alpha else "RGB"
    shown = None
    if icc and image.mode in ("RGB", "RGBA", "CMYK", "L"):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            # The profile converts colour only: alpha rides along unchanged.
            inner = image.convert("RGB") if image.mode == "RGBA" else image
            shown = ImageCms.profileToProfile(inner, source, _SRGB, outputMode="RGB")
            if alpha:
                shown.putalpha(image.getchannel("A"))
        except (ImageCms.PyCMSError, OSError, ValueError):
            shown = None  # an unreadable or mismatched profile: read as sRGB
    if shown is None or shown.mode != mode:
        shown = (shown or image).convert(mode)
    # A new image of the pixels: drop what it inherited (EXIF, XMP, text, ICC...),
    # since the encoders fall back to it for what they are not given.
    shown.info = {}
    return shown


def _webp_is_lossless(data: bytes) -> bool:
    """True when a WebP file's image is a lossless (VP8L) bitstream.

    A WebP file is a RIFF container: a simple file has one VP8 (lossy) or VP8L
    (lossless) chunk; an extended one (VP8X) holds it among other chunks."""
    offset = 12  # "RIFF" size "WEBP"
    while offset + 8 <= len(data):
        kind = data[offset : offset + 4]
        if kind == b"VP8L":
            return True
        if kind == b"VP8 ":
            return False
        (size,) = struct.unpack("<I", data[offset + 4 : offset + 8])
        offset += 8 + size + (size & 1)
    return False
