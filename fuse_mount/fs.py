"""The FUSE layer: a thin mfusepy ``Operations`` over ``PhotoStore``."""

from __future__ import annotations

import errno
import logging
import os

import mfusepy as fuse

from .store import PhotoStore

log = logging.getLogger("nic-mount")


def _translate(fn):
    """Turn OSError into FuseOSError with the same errno; anything else into EIO (logged)."""

    def wrapper(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except fuse.FuseOSError:
            raise
        except OSError as exc:
            raise fuse.FuseOSError(exc.errno or errno.EIO) from None
        except Exception:  # a bug must not take the mount down
            log.exception("%s%r failed", fn.__name__, args)
            raise fuse.FuseOSError(errno.EIO) from None

    wrapper.__name__ = fn.__name__
    return wrapper


class NicFS(fuse.Operations):
    use_ns = True

    def __init__(self, store: PhotoStore):
        self.store = store
        self.started = False

    def init(self, path):
        self.started = True
        log.info("mounted (backing %s)", self.store.backing)

    @_translate
    def getattr(self, path, fh=None):
        attrs = self.store.getattr(path)
        for key in ("st_atime", "st_mtime", "st_ctime"):  # use_ns: whole nanoseconds, exactly as stored
            attrs[key] = attrs.pop(key + "_ns")
        return attrs

    @_translate
    def readdir(self, path, fh):
        return [".", ".."] + self.store.listdir(path)

    @_translate
    def open(self, path, flags):
        return self.store.open(path, flags)

    @_translate
    def create(self, path, mode, fi=None):
        return self.store.create(path, mode)

    @_translate
    def read(self, path, size, offset, fh):
        return self.store.read(path, size, offset, fh)

    @_translate
    def write(self, path, data, offset, fh):
        return self.store.write(path, data, offset, fh)

    @_translate
    def truncate(self, path, length, fh=None):
        self.store.truncate(path, length, fh)
        return 0

    @_translate
    def flush(self, path, fh):
        self.store.flush(path, fh)
        return 0

    @_translate
    def fsync(self, path, datasync, fh):
        self.store.flush(path, fh)
        return 0

    @_translate
    def release(self, path, fh):
        self.store.release(path, fh)
        return 0

    @_translate
    def unlink(self, path):
        self.store.unlink(path)
        return 0

    @_translate
    def rename(self, old, new):
        self.store.rename(old, new)
        return 0

    @_translate
    def mkdir(self, path, mode):
        self.store.mkdir(path, mode)
        return 0

    @_translate
    def rmdir(self, path):
        self.store.rmdir(path)
        return 0

    @_translate
    def chmod(self, path, mode):
        self.store.chmod(path, mode)
        return 0

    @_translate
    def utimens(self, path, times=None):
        self.store.utimens(path, times)
        return 0

    @_translate
    def statfs(self, path):
        return self.store.statfs()

    def chown(self, path, uid, gid):
        raise fuse.FuseOSError(errno.EPERM)

    def symlink(self, target, source):
        raise fuse.FuseOSError(errno.EPERM)

    def link(self, target, source):
        raise fuse.FuseOSError(errno.EPERM)


def mount(store: PhotoStore, mountpoint: str, foreground: bool = True, debug: bool = False) -> None:
    """Mount and serve until unmounted (blocks in foreground mode).  RuntimeError if the
    mount could not be made; a signal (Ctrl-C, SIGTERM) after mounting ends it cleanly."""
    ops = NicFS(store)
    try:
        _run(ops, store, mountpoint, foreground, debug)
    except RuntimeError:
        if not ops.started:
            raise
    log.info("unmounted %s", os.path.abspath(mountpoint))


def _run(ops: NicFS, store: PhotoStore, mountpoint: str, foreground: bool, debug: bool) -> None:
    fuse.FUSE(ops, mountpoint, foreground=foreground, nothreads=False, debug=debug,
              fsname=f"nic:{store.backing}", subtype="nic", default_permissions=True,
              # served bytes differ from written bytes: never trust cached sizes
              attr_timeout=0, entry_timeout=0, negative_timeout=0)
