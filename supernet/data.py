"""Fashion-MNIST IDX reader and FashionMosaic segmentation canvases.

The images come from the standard Fashion-MNIST IDX files (Debian package
``dataset-fashion-mnist`` installs them in ``/usr/share/datasets/fashion-mnist``). The folder is
resolved as: explicit ``root`` argument > environment variable ``SPARSESEARCH_FASHION_MNIST`` >
``/usr/share/datasets/fashion-mnist``. Nothing is ever downloaded.

:class:`FashionMosaic` turns the 28x28 items into a semantic-segmentation task: each canvas is a
dark ``img_size x img_size`` image holding a few Fashion-MNIST items pasted at random positions and
scales. The label map has 11 classes: 0 = background, ``c + 1`` on pixels of an item of
Fashion-MNIST class ``c`` (see :data:`SEG_CLASSES`). Canvases are generated on the fly and are a
pure function of ``(seed, split, index)``; no files are written.

Example::

    >>> from supernet.data import FashionMosaic, MosaicSpec, make_loader
    >>> ds = FashionMosaic("train", length=1000, spec=MosaicSpec(img_size=224), seed=0)
    >>> image, label = ds[0]          # float32 [3, 224, 224], int64 [224, 224]
    >>> loader = make_loader("val", length=256, batch_size=32)
"""
from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "DEFAULT_DATA_DIR",
    "ENV_VAR",
    "FASHION_CLASSES",
    "FASHION_MEAN",
    "FASHION_STD",
    "SEG_CLASSES",
    "NUM_SEG_CLASSES",
    "DatasetNotFoundError",
    "read_idx",
    "resolve_data_dir",
    "load_fashion_mnist",
    "MosaicSpec",
    "MosaicItem",
    "FashionMosaic",
    "make_loader",
]

ENV_VAR = "SPARSESEARCH_FASHION_MNIST"
DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"

#: Fashion-MNIST class names, index = label in the IDX label files.
FASHION_CLASSES: tuple[str, ...] = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
#: Segmentation classes of :class:`FashionMosaic`: 0 = background, ``c + 1`` = Fashion-MNIST class c.
SEG_CLASSES: tuple[str, ...] = ("background",) + FASHION_CLASSES
NUM_SEG_CLASSES = len(SEG_CLASSES)  # 11

#: Normalisation of the [0, 1] pixel values (Fashion-MNIST training-set mean / std).
FASHION_MEAN = 0.2860
FASHION_STD = 0.3530

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_FIX = (
    "fix: run `apt-get install dataset-fashion-mnist` (Debian) or put train-images-idx3-ubyte.gz, "
    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz "
    f"(gzipped or not) into a folder and pass --data-dir / set {ENV_VAR}"
)


class DatasetNotFoundError(FileNotFoundError):
    """The Fashion-MNIST IDX files were not found; the one-line message names the path and the fix."""


# --------------------------------------------------------------------------------------------- IDX
# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (the MNIST / Fashion-MNIST container format), gzipped or plain.

    Layout: two zero bytes, a type code (0x08 ubyte, 0x09 byte, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions ``d``, ``d`` big-endian uint32 sizes,
    then the values in C order. Gzip is detected from the content, not from the file name.

    Args:
        path: file to read.

    Returns:
        ``numpy.ndarray`` of the stored shape, in native byte order (uint8 for type 0x08).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: bad magic number, unknown type code, corrupt gzip stream, or a truncated /
            over-long payload; the message names the file.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:  # BadGzipFile is an OSError
            raise ValueError(f"{path}: corrupt gzip stream ({e}); re-copy the file") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX file ({len(raw)} bytes, header needs 4)")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(
            f"{path}: not an IDX file (magic bytes {raw[:4].hex()}, expected 0000TTNN); "
            "pass a Fashion-MNIST *-ubyte(.gz) file"
        )
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: unknown IDX type code 0x{code:02x} (expected one of "
            f"{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)})"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dims need {header})")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got != expected:
        kind = "truncated" if got < expected else "over-long"
        raise ValueError(
            f"{path}: {kind} IDX payload ({got} bytes, shape {shape} of {dtype.name} needs {expected})"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def resolve_data_dir(root: str | os.PathLike | None = None) -> Path:
    """Resolve the Fashion-MNIST folder: ``root`` > ``$SPARSESEARCH_FASHION_MNIST`` > Debian default.

    Raises:
        DatasetNotFoundError: the resolved folder does not exist.
    """
    if root is not None and str(root) != "":
        folder, origin = Path(root), "--data-dir / root argument"
    elif os.environ.get(ENV_VAR):
        folder, origin = Path(os.environ[ENV_VAR]), f"${ENV_VAR}"
    else:
        folder, origin = Path(DEFAULT_DATA_DIR), "default location"
    folder = folder.expanduser()
    if not folder.is_dir():
        raise DatasetNotFoundError(f"Fashion-MNIST folder {folder} ({origin}) does not exist; {_FIX}")
    return folder.resolve()


def _find_file(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        p = folder / name
        if p.is_file():
            return p
    raise DatasetNotFoundError(f"Fashion-MNIST file {folder / stem}[.gz] not found; {_FIX}")


def load_fashion_mnist(
    split: Literal["train", "test"] = "train", root: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load one Fashion-MNIST split from IDX files (cached in-process on the resolved paths).

    Args:
        split: ``"train"`` (60,000 items, ``train-*``) or ``"test"`` (10,000 items, ``t10k-*``).
        root: folder with the IDX files; ``None`` -> ``$SPARSESEARCH_FASHION_MNIST`` ->
            ``/usr/share/datasets/fashion-mnist``.

    Returns:
        ``(images, labels)``: uint8 ``[N, 28, 28]`` and int64 ``[N]`` (values 0..9). Both are
        read-only views of the cache; copy them before writing.

    Raises:
        ValueError: unknown ``split`` or inconsistent / corrupt files.
        DatasetNotFoundError: the folder or one of its two files is missing.
    """
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"load_fashion_mnist: split must be 'train' or 'test', got {split!r}")
    folder = resolve_data_dir(root)
    prefix = _SPLIT_PREFIX[split]
    images = _find_file(folder, f"{prefix}-images-idx3-ubyte")
    labels = _find_file(folder, f"{prefix}-labels-idx1-ubyte")
    return _load_pair(str(images.resolve()), str(labels.resolve()))


@functools.lru_cache(maxsize=8)
def _load_pair(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(
            f"{images_path}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{labels_path}: expected {images.shape[0]} labels to match {images_path}, "
            f"got shape {labels.shape}"
        )
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_CLASSES)):
        raise ValueError(
            f"{labels_path}: labels must lie in 0..{len(FASHION_CLASSES) - 1}, "
            f"got {labels.min()}..{labels.max()}"
        )
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


# ------------------------------------------------------------------------------------------ Mosaic
class MosaicSpec(BaseModel):
    """How :class:`FashionMosaic` canvases are drawn.

    Attributes:
        img_size: canvas side in px (square canvas), 32..4096.
        min_items / max_items: number of items per canvas, drawn uniformly in [min, max].
        min_scale / max_scale: item side in px after resizing, drawn uniformly in [min, max];
            ``max_scale <= img_size`` so every item fits inside the canvas.
        threshold: an item pixel whose resized value (0..255) is ``> threshold`` is labelled as the
            item and pasted; fainter pixels stay background.
        noise: std (in 0..255 pixel units) of ``|N(0, noise)|`` background noise; 0 = black.
        data_dir: Fashion-MNIST folder (``None``: ``$SPARSESEARCH_FASHION_MNIST`` or the Debian
            default).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    img_size: int = Field(224, ge=32, le=4096)
    min_items: int = Field(1, ge=1, le=256)
    max_items: int = Field(8, ge=1, le=256)
    min_scale: int = Field(28, ge=4)
    max_scale: int = Field(112, ge=4)
    threshold: int = Field(40, ge=0, le=254)
    noise: float = Field(0.0, ge=0.0, le=128.0)
    data_dir: str | None = None

    @model_validator(mode="after")
    def _check_ranges(self) -> "MosaicSpec":
        if self.min_items > self.max_items:
            raise ValueError(
                f"min_items ({self.min_items}) > max_items ({self.max_items}): lower min_items"
            )
        if self.min_scale > self.max_scale:
            raise ValueError(
                f"min_scale ({self.min_scale}) > max_scale ({self.max_scale}): lower min_scale"
            )
        if self.max_scale > self.img_size:
            raise ValueError(
                f"max_scale ({self.max_scale}) > img_size ({self.img_size}): items must fit the canvas"
            )
        return self

    @classmethod
    def from_dataset(cls, dataset: dict | None, img_size: int | None = None) -> "MosaicSpec":
        """The canvas spec of a checkpoint sidecar's ``dataset`` dict (other keys such as ``train_length``
        ignored), at ``img_size`` when given (default: the dict's, else 224).

        Raises:
            ValueError: the fields are invalid.
        """
        fields = {k: v for k, v in dict(dataset or {}).items() if k in cls.model_fields}
        if img_size is not None:
            fields["img_size"] = int(img_size)
        return cls(**fields)

    @classmethod
    def scene(cls, img_size: int, items_per_224: tuple[float, float] = (0.5, 2.0), **fields) -> "MosaicSpec":
        """Canvases of any size with items at their usual pixel sizes and the item count scaled with the area.

        ``items_per_224`` = (min, max) items per 224 x 224 px of canvas; the default 0.5-2 leaves most
        windows background at high resolution, as in street or COCO scenes (SparseViT's regime; the
        default 224 px task has 1-8 items, 2-8x denser). Other fields (scales, threshold, ...) as given.

        Example: ``MosaicSpec.scene(448)`` -> 2-8 items of 28-112 px on 448 x 448 px.

        Raises:
            ValueError: invalid sizes (see the field checks).
        """
        area = (int(img_size) / 224.0) ** 2
        lo = max(1, int(round(items_per_224[0] * area)))
        hi = max(lo, int(round(items_per_224[1] * area)))
        return cls(img_size=int(img_size), min_items=lo, max_items=hi, **fields)


class MosaicItem(NamedTuple):
    """Placement of one pasted item (debug output of :meth:`FashionMosaic.generate`).

    ``source_index`` indexes the Fashion-MNIST split the item came from (train split for
    ``"train"`` canvases, test split for ``"val"`` / ``"test"``); ``cls`` is its Fashion-MNIST
    class (label map value ``cls + 1``); the item occupies rows ``y:y+size`` and columns
    ``x:x+size``; ``mask`` is bool ``[size, size]`` (pixels above the threshold, before occlusion
    by later items).
    """

    source_index: int
    cls: int
    x: int
    y: int
    size: int
    mask: np.ndarray


@functools.lru_cache(maxsize=2048)
def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Bilinear interpolation weights float32 ``[n_out, n_in]`` (``align_corners=False``).

    ``A @ img @ A.T`` equals ``F.interpolate(img, size=(n_out, n_out), mode="bilinear",
    align_corners=False)`` for a square ``[n_in, n_in]`` image.
    """
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = src - i0
    a = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(a, (rows, i0), 1.0 - lam)
    np.add.at(a, (rows, i1), lam)
    a = a.astype(np.float32)
    a.flags.writeable = False
    return a


_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


class FashionMosaic(Dataset):
    """Deterministic on-the-fly segmentation canvases built from Fashion-MNIST items.

    Canvas ``i`` is a pure function of ``(seed, split, i)`` (numpy ``Generator`` seeded with
    ``SeedSequence([seed, split_code, i])``), so any worker can regenerate any canvas.
    ``"train"`` canvases draw items from the 60k train split; ``"val"`` uses the first half of the
    10k test split and ``"test"`` the second half, so val and test never share an item.

    Each canvas holds ``min_items..max_items`` items, each resized (bilinear) to a random square
    side in ``[min_scale, max_scale]`` px and placed fully inside the canvas. Items are pasted in
    order; a later item overwrites image and label wherever its mask (pixel > threshold) is on.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        length: number of canvases (``len(ds)``), >= 0.
        spec: :class:`MosaicSpec` (default ``MosaicSpec()``: 224 px, 1..8 items of 28..112 px).
        seed: non-negative int.

    ``ds[i]`` returns ``(image, label)``: float32 ``[3, H, W]`` normalised with
    ``(x / 255 - FASHION_MEAN) / FASHION_STD`` (same on the 3 channels) and int64 ``[H, W]`` with
    values in ``0..10`` (0 = background).

    Raises:
        ValueError: bad ``split`` / ``length`` / ``seed``.
        DatasetNotFoundError: the Fashion-MNIST files are missing.
    """

    def __init__(
        self,
        split: Literal["train", "val", "test"] = "train",
        length: int = 1000,
        spec: MosaicSpec | None = None,
        seed: int = 0,
    ) -> None:
        if split not in _SPLIT_CODE:
            raise ValueError(f"FashionMosaic: split must be 'train', 'val' or 'test', got {split!r}")
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
            raise ValueError(f"FashionMosaic: length must be an int >= 0, got {length!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"FashionMosaic: seed must be an int >= 0, got {seed!r}")
        self.split = split
        self.length = int(length)
        self.spec = spec if spec is not None else MosaicSpec()
        if not isinstance(self.spec, MosaicSpec):
            raise ValueError(f"FashionMosaic: spec must be a MosaicSpec, got {type(spec).__name__}")
        self.seed = int(seed)
        self._source_split = "train" if split == "train" else "test"
        self._images: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._load()
        n = len(self._labels)
        if split == "train":
            self.pool = range(0, n)
        elif split == "val":
            self.pool = range(0, n // 2)
        else:
            self.pool = range(n // 2, n)
        if len(self.pool) == 0:
            raise ValueError(f"FashionMosaic: the {self._source_split} split has too few items for {split!r}")

    # The arrays are large; workers (DataLoader / Ray) reload them from the in-process cache.
    def _load(self) -> None:
        self._images, self._labels = load_fashion_mnist(self._source_split, self.spec.data_dir)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_images"] = None
        state["_labels"] = None
        return state

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.generate(i)
        return image, label

    def __repr__(self) -> str:
        return (
            f"FashionMosaic(split={self.split!r}, length={self.length}, seed={self.seed}, "
            f"spec={self.spec!r})"
        )

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, _SPLIT_CODE[self.split], i]))

    def generate(self, i: int, return_items: bool = False):
        """Build canvas ``i``.

        Args:
            i: index in ``[-len, len)``.
            return_items: also return the list of :class:`MosaicItem` placements (paste order).

        Returns:
            ``(image float32 [3, H, W], label int64 [H, W])``, plus ``list[MosaicItem]`` when
            ``return_items``.

        Raises:
            IndexError: ``i`` out of range.
        """
        i = int(i)
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"FashionMosaic index {i} out of range for length {self.length}")
        if self._images is None:
            self._load()
        spec = self.spec
        s_img = spec.img_size
        rng = self._rng(i)
        n = int(rng.integers(spec.min_items, spec.max_items + 1))
        src = self.pool.start + rng.integers(0, len(self.pool), size=n)
        sizes = rng.integers(spec.min_scale, spec.max_scale + 1, size=n)
        # uniform integer in [0, img_size - size] per item
        xs = (rng.random(n) * (s_img - sizes + 1)).astype(np.int64)
        ys = (rng.random(n) * (s_img - sizes + 1)).astype(np.int64)

        canvas = (
            np.minimum(np.abs(rng.standard_normal((s_img, s_img), dtype=np.float32)) * spec.noise, 255.0)
            if spec.noise > 0
            else np.zeros((s_img, s_img), dtype=np.float32)
        )
        label = np.zeros((s_img, s_img), dtype=np.uint8)
        thr = np.float32(spec.threshold)
        items: list[MosaicItem] = []
        n_in = self._images.shape[1]
        for k in range(n):
            s, x, y = int(sizes[k]), int(xs[k]), int(ys[k])
            cls = int(self._labels[src[k]])
            a = _resize_matrix(n_in, s)
            patch = a @ self._images[src[k]].astype(np.float32) @ a.T  # [s, s], 0..255
            mask = patch > thr
            region = canvas[y : y + s, x : x + s]
            np.copyto(region, patch, where=mask)
            label[y : y + s, x : x + s][mask] = cls + 1
            if return_items:
                items.append(MosaicItem(int(src[k]), cls, x, y, s, mask))

        image = np.empty((3, s_img, s_img), dtype=np.float32)
        np.multiply(canvas, np.float32(1.0 / (255.0 * FASHION_STD)), out=image[0])
        image[0] -= np.float32(FASHION_MEAN / FASHION_STD)
        image[1] = image[0]
        image[2] = image[0]
        out = (torch.from_numpy(image), torch.from_numpy(label.astype(np.int64)))
        return (*out, items) if return_items else out


def make_loader(
    split: Literal["train", "val", "test"] = "train",
    length: int = 1000,
    batch_size: int = 32,
    spec: MosaicSpec | None = None,
    seed: int = 0,
    shuffle: bool = False,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """DataLoader over a :class:`FashionMosaic`; batches are ``(float32 [B, 3, H, W], int64 [B, H, W])``.

    With ``shuffle=True`` the order comes from a ``torch.Generator`` seeded with ``seed``, so a
    loader is reproducible end to end.

    Raises:
        ValueError: ``batch_size < 1`` or ``num_workers < 0`` (and what :class:`FashionMosaic` raises).
    """
    if batch_size < 1:
        raise ValueError(f"make_loader: batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"make_loader: num_workers must be >= 0, got {num_workers}")
    ds = FashionMosaic(split, length=length, spec=spec, seed=seed)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        generator=generator,
        persistent_workers=False,
    )
