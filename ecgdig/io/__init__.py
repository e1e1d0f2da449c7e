"""Input and output: images (safe decoding), WFDB records, atomic file writes."""

from ecgdig.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from ecgdig.io.images import MAX_IMAGE_PIXELS, read_image, write_image
from ecgdig.io.records import read_record, write_record

__all__ = [
    "MAX_IMAGE_PIXELS",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "read_image",
    "read_record",
    "write_image",
    "write_record",
]
