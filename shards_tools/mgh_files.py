"""FreeSurfer MGH surface files: per-vertex betas and labels, read a chunk of frames at a time.

An MGH file is a 284-byte header, then the data big-endian (`>f4`, `>i4`, ...) in Fortran order of its
shape (vertices, 1, 1, frames): all vertices of frame 0, then of frame 1, ... So a subset of vertices is
read as rows of `frames x vertices` without ever holding the whole file: NSD's fsaverage betas are
163842 x 750 float32, 491 MB per hemisphere and session. `.mgz` (gzip) files are read whole by nibabel;
NSD ships labels as .mgz (small) and betas as .mgh.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mused_fm.errors import InputError
from shards_tools.volumes import damaged_file_errors

__all__ = ["MghHeader", "read_mgh_frames", "read_mgh_labels"]

CHUNK_BYTES = 64 << 20  # frames read at once: ~64 MB, whatever the vertex count


@dataclass(frozen=True)
class MghHeader:
    path: Path
    vertices: int
    frames: int
    dtype: np.dtype
    offset: int

    @classmethod
    def read(cls, path: Path) -> MghHeader:
        import nibabel as nib

        with damaged_file_errors(path):
            image = nib.load(path)
        shape = tuple(int(n) for n in image.shape)
        if len(shape) not in (3, 4) or shape[1:3] != (1, 1):
            raise InputError(
                f"{path}: shape {shape}; a surface file is (vertices, 1, 1) or (vertices, 1, 1, frames). "
                "Is it a volume? Surface betas live under fsaverage/."
            )
        frames = shape[3] if len(shape) == 4 else 1
        header = image.header
        return cls(Path(path), shape[0], frames, header.get_data_dtype(), int(header.get_data_offset()))


def read_mgh_frames(header: MghHeader, vertices: np.ndarray) -> np.ndarray:
    """(frames, len(vertices)) float32 values of the chosen vertices, in file units (NaN kept)."""
    path = header.path
    if path.name.endswith(".mgz"):
        import nibabel as nib

        with damaged_file_errors(path):
            data = np.asarray(nib.load(path).dataobj, dtype=np.float32).reshape(header.vertices, -1)
        return np.ascontiguousarray(data[vertices].T)
    row_bytes = header.vertices * header.dtype.itemsize
    expected = header.offset + header.frames * row_bytes
    if path.stat().st_size < expected:
        raise InputError(
            f"{path}: {path.stat().st_size} bytes, the header's {header.vertices} vertices x {header.frames} "
            f"frames need {expected}; the file is truncated: download it again."
        )
    out = np.empty((header.frames, len(vertices)), dtype=np.float32)
    step = max(1, CHUNK_BYTES // row_bytes)
    with open(path, "rb") as f:
        f.seek(header.offset)
        for start in range(0, header.frames, step):
            rows = min(step, header.frames - start)
            chunk = np.fromfile(f, dtype=header.dtype, count=rows * header.vertices)
            out[start : start + rows] = chunk.reshape(rows, header.vertices)[:, vertices]
    return out


def read_mgh_labels(path: Path) -> np.ndarray:
    """(vertices,) int64 labels of a surface label file (.mgz or .mgh)."""
    header = MghHeader.read(path)
    if header.frames != 1:
        raise InputError(f"{path}: {header.frames} frames; a label file has one value per vertex.")
    return read_mgh_frames(header, np.arange(header.vertices))[0].astype(np.int64)
