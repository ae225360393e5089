"""The ``nic`` command: compress, decompress, enhance, info, compare, demo.

Exit status: 0 success, 1 some input failed (each failure is reported on stderr),
2 bad usage.  Outputs are written to a temporary file and renamed into place, so
an interrupted run or a full disk never leaves a partial file behind.
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from . import NicImagePlugin, codec, container, metrics, runtime  # noqa: F401 (registers NIC)

IMAGE_SUFFIXES = {".png", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm", ".jpg", ".jpeg", ".webp", ".gif", ".tga"}
SAMPLE = Path(__file__).resolve().parent / "samples" / "chapel.png"


def _expand(inputs: list[str], suffixes: set[str]) -> list[tuple[Path, Path]]:
    """(file, name relative to its input) for files, directories (recursively, by suffix)
    and globs, in a stable order.  Relative names keep a tree's structure in -o DIR."""
    out: list[tuple[Path, Path]] = []
    for item in inputs:
        matches = [Path(m) for m in sorted(glob.glob(item))] or [Path(item)]
        for path in matches:
            if path.is_dir():
                out += [(p, p.relative_to(path)) for p in sorted(path.rglob("*"))
                        if p.is_file() and p.suffix.lower() in suffixes]
            else:
                out.append((path, Path(path.name)))
    return out


def _destination(src: Path, relative: Path, out: str | None, suffix: str, many: bool) -> Path:
    if out is None:
        return src.with_suffix(suffix)
    target = Path(out)
    if many or target.is_dir() or out.endswith(os.sep):
        dst = target / relative.with_suffix(suffix)
        dst.parent.mkdir(parents=True, exist_ok=True)
        return dst
    return target


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory + rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _progress(i: int, n: int, name: str) -> None:
    if n > 1:
        width = 30
        done = width * i // n
        sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {i}/{n} {name[-40:]:<40}")
        if i == n:
            sys.stderr.write("\n")
        sys.stderr.flush()


def cmd_compress(args: argparse.Namespace) -> int:
    files = _expand(args.inputs, IMAGE_SUFFIXES)
    failures = 0
    for i, (src, relative) in enumerate(files, 1):
        try:
            dst = _destination(src, relative, args.output, ".nic", len(files) > 1)
            with Image.open(src) as im:
                buf = io.BytesIO()
                im.save(buf, "NIC", lossless=args.lossless, quality=args.quality, profile=args.profile,
                        tune=args.tune)
                width, height = im.size
            data = buf.getvalue()
            atomic_write(dst, data)
            if args.delete:
                src.unlink()
            if len(files) == 1 or args.verbose:
                print(f"{src} -> {dst}: {src.stat().st_size if src.exists() else '?'} -> {len(data)} bytes, "
                      f"{metrics.bits_per_pixel(len(data), width, height):.3f} bpp")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            failures += 1
            sys.stderr.write(f"\nnic: {src}: {exc}\n")
        _progress(i, len(files), str(src))
    return 1 if failures else 0


def _convert_each(args: argparse.Namespace, suffixes: set[str], convert) -> int:
    """Write ``convert(image) -> image`` of every input as ``args.format``, keeping the
    ICC profile and EXIF; report failures per file and go on."""
    if args.runtime:
        os.environ["NIC_RUNTIME"] = args.runtime
    files = _expand(args.inputs, suffixes)
    failures = 0
    for i, (src, relative) in enumerate(files, 1):
        try:
            dst = _destination(src, relative, args.output, "." + args.format, len(files) > 1)
            with Image.open(src) as im:
                save_args = {k: im.info[k] for k in ("icc_profile", "exif") if k in im.info}
                buf = _encode_pil(convert(im), args.format, save_args)
            atomic_write(dst, buf)
            if len(files) == 1 or args.verbose:
                print(f"{src} -> {dst}")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            failures += 1
            sys.stderr.write(f"\nnic: {src}: {exc}\n")
        _progress(i, len(files), str(src))
    return 1 if failures else 0


def cmd_decompress(args: argparse.Namespace) -> int:
    return _convert_each(args, {".nic"}, lambda im: im)


def cmd_enhance(args: argparse.Namespace) -> int:
    from .restore import enhance_jpeg

    return _convert_each(args, {".jpg", ".jpeg"}, lambda im: enhance_jpeg(im, workers=codec.workers()))


def _encode_pil(im: Image.Image, fmt: str, save_args: dict) -> bytes:
    buf = io.BytesIO()
    try:
        im.save(buf, format=fmt.upper().replace("JPG", "JPEG").replace("TIF", "TIFF"), **save_args)
    except (KeyError, OSError):
        buf = io.BytesIO()
        im.save(buf, format=fmt.upper().replace("JPG", "JPEG").replace("TIF", "TIFF"))
    return buf.getvalue()


def _kernels() -> str:
    """Which compiled kernels the ONNX Runtime path uses (lossless decoding is several times
    slower without them; the bits are the same)."""
    from . import entropy, intnet

    parts = []
    if intnet.compiled_available():
        from . import _intmlp

        parts.append(f"lossless networks ({_intmlp.instruction_set()})")
    if entropy._compiled_decoder() is not None:
        parts.append("rANS decoding")
    return ", ".join(parts) if parts else "none (ONNX Runtime runs the lossless networks, constriction decodes)"


def cmd_info(args: argparse.Namespace) -> int:
    if args.runtime:
        print(f"runtime: {runtime.select()} (available: onnxruntime={'yes' if runtime.onnxruntime_available() else 'no'}, numpy=yes)")
        print(f"compiled kernels: {_kernels()}")
    if not args.file:
        return 0 if args.runtime else 2
    try:
        header = codec.read_info(args.file)
    except (OSError, Image.DecompressionBombError) as exc:
        sys.stderr.write(f"nic: {args.file}: {exc}\n")
        return 1
    size = os.path.getsize(args.file)
    print(f"file: {args.file}")
    print(f"format: NIC version {container.VERSION}")
    print(f"size: {header.width}x{header.height}, mode {header.mode}, tile {header.tile_size}")
    print(f"bytes: {size} ({metrics.bits_per_pixel(size, header.width, header.height):.4f} bpp)")
    for li, layer in enumerate(header.layers):
        coders = sorted({container.CODERS[t.coder] for t in layer.tiles})
        desc = f"layer {li}: {layer.planes} plane(s), {container.CODINGS[layer.coding]}"
        if layer.coding in container.QUALITY_CODINGS:
            desc += f" quality {layer.quality}"
        if layer.model_name:
            desc += f", model {layer.model_name} (sha256 {layer.model_hash.hex()[:16]})"
        print(f"{desc}, {len(layer.tiles)} tiles, coders: {', '.join(coders)}")
    for m in header.meta:
        print(f"metadata: {container.META_TAGS[m.tag]} ({m.raw_length} bytes)")
    return 0


def _load_rgb(path: str) -> np.ndarray:
    """RGB pixels of any image file Pillow reads, `.nic` included."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def cmd_compare(args: argparse.Namespace) -> int:
    try:
        a = _load_rgb(args.original)
        b = _load_rgb(args.decoded)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        sys.stderr.write(f"nic: {exc}\n")
        return 1
    if a.shape != b.shape:
        sys.stderr.write(f"nic: sizes differ: {a.shape[1]}x{a.shape[0]} vs {b.shape[1]}x{b.shape[0]}\n")
        return 1
    h, w = a.shape[:2]
    size = os.path.getsize(args.decoded)
    print(f"bpp: {metrics.bits_per_pixel(size, w, h):.4f}")
    print(f"ratio: {a.size / size:.2f}:1 (vs 24-bit RGB)")
    print(f"PSNR: {metrics.psnr(a, b):.2f} dB")
    if min(h, w) >= 11:
        print(f"MS-SSIM: {metrics.ms_ssim(a, b):.4f}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Compress and decompress the bundled sample, printing size and quality."""
    from . import models

    with Image.open(SAMPLE) as im:
        rgb = np.asarray(im.convert("RGB"))
    h, w = rgb.shape[:2]
    print(f"sample: {SAMPLE.name} {w}x{h}, raw {rgb.size} bytes, PNG {SAMPLE.stat().st_size} bytes")
    print(f"runtime: {runtime.select()}")
    settings = [("lossless", dict(lossless=True))]
    if models.default_model("lossy") is not None:
        settings += [(f"quality {q}", dict(lossless=False, quality=q)) for q in (30, 60, 90)]
    if models.default_model("lossy-ssim") is not None:
        settings.append(("q 60 ssim", dict(lossless=False, quality=60, tune="ssim")))
    if models.default_model("restore-jpeg") is not None:
        settings.append(("hybrid q 30", dict(lossless=False, quality=30, profile="hybrid")))
    out_dir = Path(args.output or tempfile.mkdtemp(prefix="nic-demo-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    for label, opts in settings:
        t0 = time.perf_counter()
        data = codec.encode(rgb, "RGB", **opts)
        t1 = time.perf_counter()
        back = codec.decode(data).pixels
        t2 = time.perf_counter()
        name = label.replace(" ", "_")
        (out_dir / f"chapel_{name}.nic").write_bytes(data)
        Image.fromarray(back).save(out_dir / f"chapel_{name}.png")
        quality = "bit-exact" if np.array_equal(back, rgb) else \
            f"PSNR {metrics.psnr(rgb, back):.2f} dB, MS-SSIM {metrics.ms_ssim(rgb, back):.4f}"
        print(f"{label:>12}: {len(data):7d} bytes, {metrics.bits_per_pixel(len(data), w, h):6.3f} bpp, "
              f"{quality}; encode {t1 - t0:.2f}s, decode {t2 - t1:.2f}s")
    print(f"files written to {out_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nic", description="nic learned image codec")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compress", help="images -> .nic")
    c.add_argument("inputs", nargs="+", help="files, directories or globs")
    c.add_argument("-o", "--output", help="output file (one input) or directory")
    g = c.add_mutually_exclusive_group()
    g.add_argument("-q", "--quality", type=int, default=75, help="lossy quality 1-100 (default 75)")
    g.add_argument("--lossless", action="store_true", help="bit-exact coding")
    c.add_argument("--profile", choices=codec.PROFILES, default="learned",
                   help="lossy coding: the learned codec (default) or hybrid (JPEG + learned restoration)")
    c.add_argument("--tune", choices=list(codec.TUNES), default="psnr",
                   help="learned codec trained for PSNR (default) or for MS-SSIM (sharper)")
    c.add_argument("--delete", action="store_true", help="remove each original after it is written")
    c.add_argument("-v", "--verbose", action="store_true")
    c.set_defaults(func=cmd_compress)
    d = sub.add_parser("decompress", help=".nic -> images")
    d.add_argument("inputs", nargs="+")
    d.add_argument("-o", "--output")
    d.add_argument("--format", default="png", help="output format (png, tiff, bmp, ...)")
    d.add_argument("--runtime", choices=runtime.RUNTIMES)
    d.add_argument("-v", "--verbose", action="store_true")
    d.set_defaults(func=cmd_decompress)
    i = sub.add_parser("info", help="header, model and bpp of a .nic file")
    i.add_argument("file", nargs="?")
    i.add_argument("--runtime", action="store_true", help="say which model runtime is active")
    i.set_defaults(func=cmd_info)
    m = sub.add_parser("compare", help="bpp, PSNR, MS-SSIM of a decoded image against its original")
    m.add_argument("original")
    m.add_argument("decoded", help="an image or a .nic file")
    m.set_defaults(func=cmd_compare)
    n = sub.add_parser("enhance", help="JPEG files -> images with their compression artefacts removed")
    n.add_argument("inputs", nargs="+", help="JPEG files, directories or globs")
    n.add_argument("-o", "--output", help="output file (one input) or directory")
    n.add_argument("--format", default="png", help="output format (png, tiff, bmp, ...)")
    n.add_argument("--runtime", choices=runtime.RUNTIMES)
    n.add_argument("-v", "--verbose", action="store_true")
    n.set_defaults(func=cmd_enhance)
    e = sub.add_parser("demo", help="round-trip the bundled sample image")
    e.add_argument("-o", "--output", help="directory for the demo files")
    e.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "compress" and not 1 <= args.quality <= 100:
        sys.stderr.write("nic: quality must be from 1 to 100\n")
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        sys.stderr.write("\nnic: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
