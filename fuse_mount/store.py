"""The compressed photo store, without FUSE: a virtual tree over a backing directory.

Backing ``NAME.nic`` where NAME ends in a servable image suffix appears as NAME,
served decoded in its original format (``serve.py``); every other backing file
appears as itself.  Written files are staged in a temporary file inside BACKING
and committed on release: images that can be served back without loss are
encoded, verified (lossless: decoded and compared pixel for pixel), fsync'ed and
renamed into place; anything else, or anything ``.nic`` would not shrink, is
renamed into place unchanged.  A crash therefore leaves the old or the new
version of every file, never a torn one; stray temporary files are removed when
the store opens.

Errors are OSError with an errno, which the FUSE layer passes on.
"""

from __future__ import annotations

import errno
import io
import itertools
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

import pillow_nic
from pillow_nic import container, models

from . import serve

log = logging.getLogger("nic-mount")

NIC_SUFFIX = ".nic"
TEMP_PREFIX = ".nic-tmp-"
SERVABLE = (".png", ".pgm", ".ppm", ".pnm")


def _err(code: int, what: str = "") -> OSError:
    return OSError(code, os.strerror(code) + (f": {what}" if what else ""))


@dataclass
class Handle:
    """An open file: the virtual path, and for writers the staging file."""

    path: str
    temp: Path | None = None
    dirty: bool = False


class LRUCache:
    """Decoded (served) files, bounded by total bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.data: OrderedDict[tuple, bytes] = OrderedDict()
        self.size = 0
        self.lock = threading.Lock()

    def get(self, key: tuple) -> bytes | None:
        with self.lock:
            value = self.data.get(key)
            if value is not None:
                self.data.move_to_end(key)
            return value

    def put(self, key: tuple, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        with self.lock:
            if key in self.data:
                return
            self.data[key] = value
            self.size += len(value)
            while self.size > self.max_bytes:
                _, old = self.data.popitem(last=False)
                self.size -= len(old)


class PhotoStore:
    def __init__(self, backing: str | os.PathLike, quality: int | None = None, cache_mb: int = 256):
        self.backing = Path(backing).resolve()
        if not self.backing.is_dir():
            raise _err(errno.ENOTDIR, str(backing))
        if quality is not None and not 1 <= quality <= 100:
            raise ValueError("quality must be from 1 to 100")
        if quality is not None and models.default_model("lossy") is None:
            raise ValueError("lossy storage (quality=...) needs a lossy model and none is installed")
        self.quality = quality
        self.cache = LRUCache(cache_mb << 20)
        self.lock = threading.RLock()
        self.handles: dict[int, Handle] = {}
        self.staged: dict[str, Handle] = {}  # virtual path -> open writer (visible before commit)
        self.counter = itertools.count(1)
        self.clean_temporaries()

    # ---- names -------------------------------------------------------------------------
    def clean_temporaries(self) -> int:
        """Remove staging files left by a crash; returns how many."""
        removed = 0
        for p in self.backing.rglob(TEMP_PREFIX + "*"):
            p.unlink(missing_ok=True)
            removed += 1
        return removed

    def _real(self, path: str) -> Path:
        """Backing path for a virtual path, refusing anything that leaves BACKING."""
        parts = [p for p in path.split("/") if p]
        if any(p in ("..", ".") or p.startswith(TEMP_PREFIX) for p in parts):
            raise _err(errno.EACCES, path)
        return self.backing.joinpath(*parts)

    @staticmethod
    def _servable(name: str) -> bool:
        return name.lower().endswith(SERVABLE)

    def _stored(self, path: str) -> Path | None:
        """The `.nic` backing a virtual image path, if there is one."""
        real = self._real(path)
        if self._servable(real.name):
            nic = real.with_name(real.name + NIC_SUFFIX)
            if nic.is_file():
                return nic
        return None

    def _visible_name(self, name: str) -> str | None:
        if name.startswith(TEMP_PREFIX):
            return None
        if name.endswith(NIC_SUFFIX) and self._servable(name[:-len(NIC_SUFFIX)]):
            return name[:-len(NIC_SUFFIX)]
        return name

    # ---- reading -------------------------------------------------------------------------
    def listdir(self, path: str) -> list[str]:
        real = self._real(path)
        if not real.is_dir():
            raise _err(errno.ENOTDIR, path)
        names = {self._visible_name(n) for n in os.listdir(real)}
        directory = self._key(path)
        for staged in list(self.staged):
            parent, _, name = staged.rpartition("/")
            if (parent or "/") == directory:
                names.add(name)
        return sorted(n for n in names if n)

    def _served_size(self, nic: Path) -> int:
        with open(nic, "rb") as f:
            header = container.read_header(f)
        fmt = "png" if nic.name.lower()[:-len(NIC_SUFFIX)].endswith(".png") else "pnm"
        meta = {container.META_TAGS[m.tag]: m.raw_length for m in header.meta}
        return serve.served_size(fmt, header.mode, header.width, header.height, meta)

    def getattr(self, path: str) -> dict:
        """lstat fields of ``path`` as served (an image's decoded size), times in whole
        nanoseconds: seconds as floats lose the last digits, and rsync -a compares them."""
        staged = self.staged.get(self._key(path))
        st = None
        if staged is not None:
            try:
                st = os.lstat(staged.temp)
            except FileNotFoundError:  # committed meanwhile: fall through to BACKING
                pass
        nic = self._stored(path) if st is None else None
        if st is None:
            try:
                st = os.lstat(nic or self._real(path))
            except FileNotFoundError:
                raise _err(errno.ENOENT, path) from None
        attrs = {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size",
                                             "st_atime_ns", "st_mtime_ns", "st_ctime_ns")}
        if nic is not None:
            try:
                attrs["st_size"] = self._served_size(nic)
            except (OSError, Image.DecompressionBombError) as exc:
                # keep it listable; a read then fails with EIO
                log.error("corrupt stored file %s: %s", nic, exc)
        return attrs

    def served_bytes(self, path: str) -> bytes:
        """The whole content a read of ``path`` returns (decoded and cached for images)."""
        nic = self._stored(path)
        if nic is None:
            try:
                return self._real(path).read_bytes()
            except FileNotFoundError:
                raise _err(errno.ENOENT, path) from None
        st = nic.stat()
        key = (str(nic), st.st_mtime_ns, st.st_size)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        try:
            decoded = pillow_nic.decode(nic)
            fmt = "png" if path.lower().endswith(".png") else "pnm"
            data = serve.serve(fmt, decoded.mode, decoded.pixels, decoded.metadata)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            log.error("cannot decode %s: %s", nic, exc)
            raise _err(errno.EIO, path) from None
        self.cache.put(key, data)
        return data

    def read(self, path: str, size: int, offset: int, fh: int | None = None) -> bytes:
        handle = self.handles.get(fh) if fh is not None else None
        if handle is not None and handle.temp is not None:
            with open(handle.temp, "rb") as f:
                f.seek(offset)
                return f.read(size)
        if self._stored(path) is None:
            with open(self._real(path), "rb") as f:
                f.seek(offset)
                return f.read(size)
        return self.served_bytes(path)[offset:offset + size]

    # ---- writing -------------------------------------------------------------------------
    @staticmethod
    def _key(path: str) -> str:
        return "/" + "/".join(p for p in path.split("/") if p)

    def _temp_for(self, real: Path) -> Path:
        return real.with_name(f"{TEMP_PREFIX}{os.getpid()}-{next(self.counter)}-{real.name}")

    def open(self, path: str, flags: int) -> int:
        real = self._real(path)
        if self._stored(path) is None and not real.exists():
            raise _err(errno.ENOENT, path)
        handle = Handle(path)
        if flags & (os.O_WRONLY | os.O_RDWR):
            handle.temp = self._temp_for(real)
            initial = b"" if flags & os.O_TRUNC else self.served_bytes(path)
            handle.temp.write_bytes(initial)
            handle.dirty = bool(flags & os.O_TRUNC)
            self.staged[self._key(path)] = handle
        fh = next(self.counter)
        self.handles[fh] = handle
        return fh

    def create(self, path: str, mode: int) -> int:
        real = self._real(path)
        if not real.parent.is_dir():
            raise _err(errno.ENOENT, path)
        handle = Handle(path, self._temp_for(real), dirty=True)
        handle.temp.write_bytes(b"")
        os.chmod(handle.temp, mode & 0o7777)
        self.staged[self._key(path)] = handle
        fh = next(self.counter)
        self.handles[fh] = handle
        return fh

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        handle = self.handles.get(fh)
        if handle is None or handle.temp is None:
            raise _err(errno.EBADF, path)
        with open(handle.temp, "r+b") as f:
            f.seek(offset)
            f.write(data)
        handle.dirty = True
        self.staged[self._key(path)] = handle
        return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        handle = self.handles.get(fh) if fh is not None else None
        if handle is not None and handle.temp is not None:
            os.truncate(handle.temp, length)
            handle.dirty = True
            self.staged[self._key(path)] = handle
            return
        tmp_fh = self.open(path, os.O_RDWR)
        try:
            self.truncate(path, length, tmp_fh)
        finally:
            self.release(path, tmp_fh)

    def flush(self, path: str, fh: int) -> None:
        handle = self.handles.get(fh)
        if handle is not None and handle.dirty:
            self._commit(handle)

    def release(self, path: str, fh: int) -> None:
        handle = self.handles.pop(fh, None)
        if handle is None:
            return
        try:
            if handle.dirty:
                self._commit(handle)
        finally:
            self._unstage(handle)
            if handle.temp is not None:
                handle.temp.unlink(missing_ok=True)

    def _encode(self, data: bytes, name: str) -> bytes | None:
        """`.nic` bytes for a written file, or None to keep it as it is."""
        source = serve.inspect(data, name)
        if source is None:
            return None
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                pixels = np.asarray(im)
                if source.mode == "I;16":
                    pixels = pixels.astype(np.uint16)
                if im.mode not in (source.mode, "I", "I;16"):
                    return None
        except (OSError, ValueError, Image.DecompressionBombError):
            return None
        lossy = self.quality is not None and source.mode in ("L", "LA", "RGB", "RGBA")
        nic = pillow_nic.encode(pixels, source.mode, lossless=not lossy, quality=self.quality or 90,
                                metadata=source.metadata)
        back = pillow_nic.decode(nic)
        if not lossy and (not np.array_equal(back.pixels, pixels) or back.metadata != source.metadata):
            log.error("verification failed for %s: keeping the original bytes", name)
            return None
        return nic if len(nic) < len(data) else None

    def _store_compressed(self, src: Path, real: Path) -> bool:
        """Store the file ``src`` as ``real``'s `.nic` if that is possible and smaller,
        keeping its mode and times; False (nothing changed) otherwise."""
        nic = self._encode(src.read_bytes(), real.name)
        if nic is None:
            return False
        st = os.stat(src)
        staged = self._temp_for(real)
        with open(staged, "wb") as f:
            f.write(nic)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(staged, st.st_mode & 0o7777)
        os.utime(staged, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(staged, real.with_name(real.name + NIC_SUFFIX))
        real.unlink(missing_ok=True)
        self._fsync_dir(real.parent)
        return True

    def _commit(self, handle: Handle) -> None:
        """Make the staged content the file's content, atomically."""
        real = self._real(handle.path)
        with self.lock:
            with open(handle.temp, "r+b") as f:
                os.fsync(f.fileno())
            if not (self._servable(real.name) and self._store_compressed(handle.temp, real)):
                committed = self._temp_for(real)
                os.link(handle.temp, committed)
                os.replace(committed, real)
                real.with_name(real.name + NIC_SUFFIX).unlink(missing_ok=True)
                self._fsync_dir(real.parent)
        handle.dirty = False
        self._unstage(handle)  # from now on the path shows the committed (served) file

    def _unstage(self, handle: Handle) -> None:
        key = self._key(handle.path)
        if self.staged.get(key) is handle:
            del self.staged[key]

    @staticmethod
    def _fsync_dir(d: Path) -> None:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ---- namespace -------------------------------------------------------------------------
    def _backing_of(self, path: str) -> Path:
        nic = self._stored(path)
        real = nic or self._real(path)
        if not real.exists() and not real.is_symlink():
            raise _err(errno.ENOENT, path)
        return real

    def unlink(self, path: str) -> None:
        with self.lock:
            staged = self.staged.pop(self._key(path), None)
            if staged is not None:  # still being written: it will not be committed
                staged.dirty = False
                try:
                    self._backing_of(path).unlink()
                except OSError:
                    pass
                return
            self._backing_of(path).unlink()

    def rename(self, old: str, new: str) -> None:
        """Rename, replacing an existing target.  A stored image renamed to another
        format's name is materialised in its old format, since the name picks the format."""
        with self.lock:
            src = self._backing_of(old)
            dst = self._real(new)
            dst_nic = dst.with_name(dst.name + NIC_SUFFIX)
            stored = src.name.endswith(NIC_SUFFIX)
            if stored and dst.suffix.lower() == Path(old).suffix.lower():
                os.replace(src, dst_nic)
                dst.unlink(missing_ok=True)
                return
            if stored:
                staged = self._temp_for(dst)
                staged.write_bytes(self.served_bytes(old))
                os.replace(staged, dst)
                src.unlink()
            elif src.is_file() and self._servable(dst.name) and self._store_compressed(src, dst):
                src.unlink()
                return
            else:
                os.replace(src, dst)
            if dst_nic != src:
                dst_nic.unlink(missing_ok=True)

    def mkdir(self, path: str, mode: int) -> None:
        self._real(path).mkdir(mode)

    def rmdir(self, path: str) -> None:
        real = self._real(path)
        if any(not n.startswith(TEMP_PREFIX) for n in os.listdir(real)):
            raise _err(errno.ENOTEMPTY, path)
        real.rmdir()

    def _attr_target(self, path: str) -> Path:
        """Where attributes of ``path`` live: an open writer's staging file, else BACKING."""
        staged = self.staged.get(self._key(path))
        return staged.temp if staged is not None else self._backing_of(path)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._attr_target(path), mode & 0o7777)

    def utimens(self, path: str, times: tuple[int, int] | None) -> None:
        os.utime(self._attr_target(path), ns=times)

    def statfs(self) -> dict:
        st = os.statvfs(self.backing)
        return {k: getattr(st, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                                             "f_files", "f_flag", "f_frsize", "f_namemax")}
