"""Which file a TFTP client may read, and its bytes, cached.

Owns path confinement and the content cache. Every name a client asks for is confined to
tftp.root: `..` components, NUL bytes, backslashes, over-long names and symlinks that lead
out of the root are refused (ERROR 2), a missing file is ERROR 1; leading slashes (or the
root's own absolute path) are dropped. Windows boot loaders name files with backslashes:
`tftp.backslash_as_slash` reads them as slashes instead (then `..\\x` is refused as `..`).
The boot files the operator configured (boot.firmware values, quirk firmware) are
the exception: the operator chose them, so they are served wherever their links lead
(Debian's /usr/lib/ipxe/ipxe.efi -> /boot/ipxe.efi).

File contents are read once and kept while (device, inode, size, mtime) stay the same, so a
storm of clients never reads the disk per block. Does no networking.
"""

from __future__ import annotations

import os
import stat
from collections import OrderedDict
from dataclasses import dataclass

from proxydhcp.config import boot_file
from proxydhcp.tftp import packet as pk
from proxydhcp.tftp.transfer import ACCESS_DENIED, NOT_FOUND, Blocks, PrecomputedBlocks

MAX_NAME = 512                       # bytes of a requested name
PRECOMPUTE_MAX = 8 * 1024 * 1024     # files up to this size keep every DATA packet built
PRECOMPUTE_BLKSIZES = 4             # at most this many blksizes precomputed per file
CACHE_BUDGET = 256 * 1024 * 1024     # bytes of content (+ built packets) kept in memory
OTHER = "other"                      # metric label for names that are neither boot files nor in the root


class FileRefused(Exception):
    """The request cannot be served: carries the TFTP error code and the outcome."""

    def __init__(self, code: int, message: str, outcome: str) -> None:
        super().__init__(message)
        self.code, self.message, self.outcome = code, message, outcome


def _denied(message: str) -> FileRefused:
    return FileRefused(pk.ERR_ACCESS, message, ACCESS_DENIED)


def _missing(name: str) -> FileRefused:
    return FileRefused(pk.ERR_NOT_FOUND, f"file not found: {name}", NOT_FOUND)


def normalise(name: str, root: str, backslash_as_slash: bool = False) -> str:
    """The client's name as a root-relative path with '/' separators (not yet checked)."""
    if backslash_as_slash:
        name = name.replace("\\", "/")
    root_prefix = os.path.normpath(root).rstrip("/") + "/"
    if root_prefix != "/" and name.startswith(root_prefix):
        name = name[len(root_prefix):]
    name = name.lstrip("/")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts)


def boot_files(cfg) -> dict[str, str]:
    """{name a client will ask for: path} for the operator's configured boot files, named by
    the rule the responder hands them out with (proxydhcp.config.boot_file)."""
    root = cfg.tftp.root
    values = list(cfg.boot.firmware.values())
    for quirk in cfg.dhcp.quirks:
        fw = quirk.set.get("firmware") if isinstance(quirk.set, dict) else None
        if isinstance(fw, str) and fw:
            values.append(fw)
    out: dict[str, str] = {}
    for value in values:
        name, path = boot_file(value, root)
        if name:
            out[name] = path
    return out


def _inside(path: str, real_root: str) -> bool:
    return path == real_root or path.startswith(real_root.rstrip("/") + "/")


@dataclass(frozen=True)
class Resolved:
    name: str          # root-relative name (the metric label when served)
    path: str          # what to open
    boot_file: bool    # an operator-configured boot file: links may leave the root


def resolve(name: str, root: str, boot: dict[str, str], backslash_as_slash: bool = False) -> Resolved:
    """Map a requested name to a path to open, or raise FileRefused."""
    if "\0" in name:
        raise _denied("access violation: NUL byte in the file name")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME:
        raise _denied(f"access violation: file name longer than {MAX_NAME} bytes")
    if "\\" in name and not backslash_as_slash:
        raise _denied("access violation: backslash in the file name (tftp.backslash_as_slash reads it as '/')")
    rel = normalise(name, root, backslash_as_slash)
    if not rel:
        raise _missing(name or "(empty name)")
    if ".." in rel.split("/"):
        raise _denied("access violation: '..' in the file name")
    if rel in boot:
        return Resolved(rel, boot[rel], True)
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, rel))
    if not _inside(real, real_root):
        if not os.path.lexists(os.path.join(real_root, rel)) and not os.path.exists(real):
            raise _missing(name)
        raise _denied("access violation: the path leads outside the TFTP root")
    return Resolved(rel, real, False)


@dataclass
class Content:
    """One file's bytes, read once; DATA packets built per blksize on demand."""
    path: str
    key: tuple
    data: bytes
    _blocks: dict
    _netascii: "Content | None" = None

    @property
    def size(self) -> int:
        return len(self.data)

    def blocks(self, blksize: int) -> Blocks:
        b = self._blocks.get(blksize)
        if b is None:
            if len(self.data) <= PRECOMPUTE_MAX and len(self._blocks) < PRECOMPUTE_BLKSIZES:
                b = self._blocks[blksize] = PrecomputedBlocks(self.data, blksize)
            else:
                b = Blocks(self.data, blksize)   # large file or odd blksize: built when sent
        return b

    def netascii(self) -> "Content":
        """RFC 1350 netascii: CR -> CR NUL, LF -> CR LF."""
        if self._netascii is None:
            data = self.data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
            self._netascii = Content(self.path, self.key, data, {})
        return self._netascii

    @property
    def nbytes(self) -> int:
        n = len(self.data) + sum(getattr(b, "nbytes", 0) for b in self._blocks.values())
        if self._netascii is not None:
            n += self._netascii.nbytes
        return n


def _key(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ContentCache:
    """Path -> Content, re-read when the file changes, least recently used dropped first."""

    def __init__(self, budget: int = CACHE_BUDGET) -> None:
        self.budget = budget
        self._items: OrderedDict[str, Content] = OrderedDict()
        self.reads = 0   # how many times a file was read from disk (tests check storms)

    def open(self, resolved: Resolved, root: str, display: str) -> Content:
        """The content of a resolved path, from the cache when the file did not change."""
        try:
            st = os.stat(resolved.path)
        except FileNotFoundError:
            raise _missing(display) from None
        except NotADirectoryError:
            raise _missing(display) from None
        except PermissionError:
            raise _denied("access violation: permission denied") from None
        except OSError as exc:
            raise _denied(f"access violation: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise _denied("access violation: not a regular file")
        key = _key(st)
        cached = self._items.get(resolved.path)
        if cached is not None and cached.key == key:
            self._items.move_to_end(resolved.path)
            return cached
        content = self._read(resolved, root, display)
        self._items[resolved.path] = content
        self._items.move_to_end(resolved.path)
        self._trim()
        return content

    def _read(self, resolved: Resolved, root: str, display: str) -> Content:
        try:
            fd = os.open(resolved.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise _missing(display) from None
        except OSError as exc:
            raise _denied(f"access violation: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _denied("access violation: not a regular file")
            if not resolved.boot_file:
                # What was really opened (a link may have been swapped since resolve()).
                opened = os.readlink(f"/proc/self/fd/{fd}")
                if not _inside(opened, os.path.realpath(root)):
                    raise _denied("access violation: the path leads outside the TFTP root")
            data = os.read(fd, st.st_size)          # one allocation, no join copy
            if len(data) == st.st_size:
                more = os.read(fd, 1 << 16)          # grew while we read: take the rest too
                if more:
                    chunks = [data, more]
                    while more:
                        more = os.read(fd, 1 << 20)
                        chunks.append(more)
                    data = b"".join(chunks)
            else:
                chunks = [data]
                while True:
                    chunk = os.read(fd, 1 << 20)
                    if not chunk:
                        break
                    chunks.append(chunk)
                data = b"".join(chunks)
            self.reads += 1
            return Content(resolved.path, _key(st), data, {})
        except OSError as exc:
            raise _denied(f"access violation: {exc.strerror}") from None
        finally:
            os.close(fd)

    def _trim(self) -> None:
        total = sum(c.nbytes for c in self._items.values())
        while total > self.budget and len(self._items) > 1:
            _, dropped = self._items.popitem(last=False)
            total -= dropped.nbytes

    def clear(self) -> None:
        self._items.clear()


def metric_label(resolved: Resolved | None) -> str:
    """Bounded `file` label: a boot file or a file that exists in the root, else 'other'."""
    return resolved.name if resolved is not None else OTHER
