"""``nic-mount BACKING MOUNTPOINT``: mount a directory as a compressed photo store.

Images written into the mount (PNG, PGM/PPM that can be served back exactly) are
stored in BACKING as `.nic`, losslessly unless ``-o quality=Q`` asks for lossy
storage; reads return the image in its original format.  Anything else, and
anything `.nic` would not shrink, is stored unchanged.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys

DESCRIPTION = __doc__.split("\n\n")[1]


def parse_options(text: str | None) -> dict:
    opts = {}
    for item in (text or "").split(","):
        if not item:
            continue
        key, _, value = item.partition("=")
        opts[key.strip()] = value.strip()
    unknown = set(opts) - {"quality", "cache_mb", "debug"}
    if unknown:
        raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
    return opts


def unmount(mountpoint: str) -> int:
    for tool in ("fusermount3", "fusermount"):
        if shutil.which(tool):
            return subprocess.call([tool, "-u", mountpoint])
    return subprocess.call(["umount", mountpoint])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nic-mount", description=DESCRIPTION,
                                 epilog="Lossy storage (-o quality=Q) is a deliberate choice: reads then return "
                                        "the decoded lossy image, not the pixels written. Unmount with "
                                        "'fusermount -u MOUNTPOINT', 'nic-mount --unmount MOUNTPOINT' or Ctrl-C.")
    ap.add_argument("backing", nargs="?", help="directory holding the .nic files")
    ap.add_argument("mountpoint")
    ap.add_argument("-o", dest="options", help="quality=Q (lossy, 1-100), cache_mb=N (default 256), debug")
    ap.add_argument("--unmount", action="store_true", help="unmount MOUNTPOINT and exit")
    ap.add_argument("--background", action="store_true", help="detach instead of running in the foreground")
    args = ap.parse_args(argv)
    if args.unmount:
        return unmount(args.mountpoint)
    if not args.backing:
        ap.error("BACKING is required")
    try:
        opts = parse_options(args.options)
        quality = int(opts["quality"]) if "quality" in opts else None
        cache_mb = int(opts.get("cache_mb", 256))
    except ValueError as exc:
        ap.error(str(exc))
    logging.basicConfig(level=logging.DEBUG if "debug" in opts else logging.INFO,
                        format="nic-mount: %(levelname)s %(message)s")
    try:
        from .fs import mount
        from .store import PhotoStore

        store = PhotoStore(args.backing, quality=quality, cache_mb=cache_mb)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"nic-mount: {exc}\n")
        return 1
    try:
        mount(store, args.mountpoint, foreground=not args.background, debug="debug" in opts)
    except RuntimeError as exc:
        sys.stderr.write(f"nic-mount: cannot mount {args.mountpoint}: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
