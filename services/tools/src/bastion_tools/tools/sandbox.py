"""File access confined to one sandbox root.

Two layers, both always applied:

1. Lexical (`check_relative_path`, also run by the tools' argument schemas): a path is
   relative, made of at most 8 components of `[A-Za-z0-9_][A-Za-z0-9._-]*`, so `..`,
   absolute paths, NUL and other control bytes, backslashes, percent-encoding,
   Unicode look-alikes (U+2025, fullwidth dots) and hidden files never get through, and
   a file name must end in an allowed extension.
2. On the file system: the path is resolved and must stay under the resolved root, and
   it is then walked one component at a time from a descriptor of the root with
   `O_NOFOLLOW` (openat), so a symlink anywhere on the way is refused even if it is
   swapped in after the check. Only regular files are read, written or deleted (no
   devices, FIFOs or sockets; no hard-linked file is read); files over the size limit
   are refused; writes go to a temporary file in the same directory, fsynced, then
   renamed over the target (which replaces a link, never writes through it).
3. A quota: the regular files under the root may total at most `quota_bytes`; a write
   that would pass it is refused and leaves nothing behind. Directories are created
   only for a write that succeeds, and temporary files of writes interrupted by a crash
   are removed when the sandbox opens (`ensure_root`).

All methods are blocking: call them through `anyio.to_thread.run_sync`.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import threading
from collections.abc import Collection, MutableSequence, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Sandbox", "SandboxError", "check_relative_path"]

MAX_DEPTH = 8
MAX_PATH_LENGTH = 255
_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_LISTING = 1000
DEFAULT_QUOTA_BYTES = 100 * 1024 * 1024
_TMP_PREFIX = ".tmp-"


# Not frozen: contextlib assigns __traceback__ to exceptions passing through it.
@dataclass(eq=False)
class SandboxError(Exception):
    """The path or file is refused. `message` is safe to show the caller."""

    message: str

    def __str__(self) -> str:
        return self.message


def check_relative_path(
    value: str, *, extensions: Collection[str] | None, allow_root: bool = False
) -> str:
    """`value` normalised (no `.` components, no trailing slash), or ValueError saying why."""
    if "\x00" in value:
        raise ValueError("path must not contain a NUL byte")
    if len(value) > MAX_PATH_LENGTH:
        raise ValueError(f"path must be at most {MAX_PATH_LENGTH} characters")
    if value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", value):
        raise ValueError("path must be relative to the sandbox root")
    if "\\" in value:
        raise ValueError("path must use '/' as separator")
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if not parts:
        if allow_root:
            return ""
        raise ValueError("path must name a file")
    if ".." in parts:
        raise ValueError("path must not contain '..'")
    if len(parts) > MAX_DEPTH:
        raise ValueError(f"path must be at most {MAX_DEPTH} levels deep")
    for part in parts:
        if not _COMPONENT.fullmatch(part):
            raise ValueError(
                "path components must be letters, digits, '_', '-' or '.' "
                "and must not start with '.' or '-'"
            )
    if extensions is not None:
        suffix = Path(parts[-1]).suffix.lower()
        if suffix not in extensions:
            raise ValueError(f"file type must be one of {', '.join(sorted(extensions))}")
    return "/".join(parts)


def _refusal(exc: OSError) -> SandboxError:
    if exc.errno == errno.ENOENT:
        return SandboxError("no such file or directory")
    if exc.errno in (errno.ELOOP, errno.EMLINK):
        return SandboxError("symbolic links are not followed")
    if exc.errno == errno.ENOTDIR:
        return SandboxError("not a directory (or a symbolic link)")
    if exc.errno == errno.EISDIR:
        return SandboxError("is a directory")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return SandboxError("permission denied")
    if exc.errno == errno.ENOSPC:
        return SandboxError("no space left in the sandbox")
    return SandboxError("the file could not be accessed")


class Sandbox:
    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        extensions: Collection[str],
        max_bytes: int,
        quota_bytes: int = DEFAULT_QUOTA_BYTES,
    ):
        self.root = Path(root).resolve()
        self.extensions = frozenset(e.lower() for e in extensions)
        self.max_bytes = max_bytes
        self.quota_bytes = quota_bytes
        # Measuring the use and writing happen together: two writes of this process
        # cannot both fit in the same room.
        self._writing = threading.Lock()

    def ensure_root(self) -> None:
        """Create the root, and remove what interrupted writes left (their temp files)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for directory, _dirs, files in os.walk(self.root, followlinks=False):
            for name in files:
                if name.startswith(_TMP_PREFIX):
                    Path(directory, name).unlink(missing_ok=True)

    def used_bytes(self) -> int:
        """The size of every regular file under the root (symlinks are not followed)."""
        total = 0
        for directory, _dirs, files in os.walk(self.root, followlinks=False):
            for name in files:
                try:
                    st = os.stat(os.path.join(directory, name), follow_symlinks=False)
                except OSError:
                    continue  # deleted meanwhile
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
        return total

    def _check_quota(self, parts: Sequence[str], size: int) -> None:
        target = self.root.joinpath(*parts)
        try:
            st = os.stat(target, follow_symlinks=False)
            replaced = st.st_size if stat.S_ISREG(st.st_mode) else 0
        except OSError:
            replaced = 0
        if self.used_bytes() - replaced + size > self.quota_bytes:
            raise SandboxError(
                f"the sandbox is full: this write would pass its quota of {self.quota_bytes}"
                " bytes; delete files first"
            )

    # -- the checks --------------------------------------------------------------------

    def _parts(self, rel: str, *, is_file: bool) -> list[str]:
        try:
            clean = check_relative_path(
                rel, extensions=self.extensions if is_file else None, allow_root=not is_file
            )
        except ValueError as exc:
            raise SandboxError(str(exc)) from None
        # Resolve and check: the canonical path must still be inside the root.
        resolved = (self.root / clean).resolve()
        if resolved != self.root and not resolved.is_relative_to(self.root):
            raise SandboxError("path leaves the sandbox root")
        return clean.split("/") if clean else []

    def _open_dir(
        self,
        parts: Sequence[str],
        *,
        create: bool = False,
        created: MutableSequence[str] | None = None,
    ) -> int:
        """A descriptor of the directory `parts`, walked without following any symlink;
        with `create`, missing ones are made and their paths appended to `created`."""
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for depth, part in enumerate(parts):
                if create:
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                        if created is not None:
                            created.append("/".join(parts[: depth + 1]))
                    except FileExistsError:
                        pass
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        except OSError as exc:
            os.close(fd)
            raise _refusal(exc) from None
        return fd

    # -- the operations ----------------------------------------------------------------

    def list(self, directory: str) -> list[dict[str, Any]]:
        fd = self._open_dir(self._parts(directory, is_file=False))
        try:
            entries: list[dict[str, Any]] = []
            for name in sorted(os.listdir(fd)):
                if name.startswith(".") or not _COMPONENT.fullmatch(name):
                    continue
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    entries.append({"name": name, "type": "directory"})
                elif stat.S_ISREG(st.st_mode):
                    entries.append({"name": name, "type": "file", "size": st.st_size})
                if len(entries) >= MAX_LISTING:
                    break
            return entries
        except OSError as exc:
            raise _refusal(exc) from None
        finally:
            os.close(fd)

    def read(self, path: str) -> str:
        *dirs, name = self._parts(path, is_file=True)
        dir_fd = self._open_dir(dirs)
        try:
            # O_NONBLOCK: opening a FIFO must not hang; it is refused just below.
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(name, flags, dir_fd=dir_fd)
        except OSError as exc:
            raise _refusal(exc) from None
        finally:
            os.close(dir_fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SandboxError("not a regular file")
            if st.st_nlink > 1:
                # A hard link may share its inode with a file outside the root.
                raise SandboxError("hard-linked files are not read")
            if st.st_size > self.max_bytes:
                raise SandboxError(f"file is larger than {self.max_bytes} bytes")
            chunks = []
            remaining = self.max_bytes + 1
            while remaining > 0:
                chunk = os.read(fd, min(remaining, 65536))
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
            data = b"".join(chunks)
        except OSError as exc:
            raise _refusal(exc) from None
        finally:
            os.close(fd)
        if len(data) > self.max_bytes:
            raise SandboxError(f"file is larger than {self.max_bytes} bytes")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise SandboxError("file is not UTF-8 text") from None

    def write(self, path: str, content: str) -> dict[str, Any]:
        data = content.encode("utf-8")
        if len(data) > self.max_bytes:
            raise SandboxError(f"content is larger than {self.max_bytes} bytes")
        parts = self._parts(path, is_file=True)
        with self._writing:
            self._check_quota(parts, len(data))
            created: MutableSequence[str] = []
            try:
                return self._write(parts, data, created)
            except BaseException:
                self._remove_dirs(created)  # a refused write leaves no directory behind
                raise

    def _remove_dirs(self, created: Sequence[str]) -> None:
        for rel in reversed(created):
            try:
                os.rmdir(self.root / rel)
            except OSError:
                return  # no longer empty (another write used it): keep it

    def _write(
        self, parts: Sequence[str], data: bytes, created: MutableSequence[str]
    ) -> dict[str, Any]:
        *dirs, name = parts
        dir_fd = self._open_dir(dirs, create=True, created=created)
        tmp = f"{_TMP_PREFIX}{secrets.token_hex(8)}"
        try:
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                if not stat.S_ISREG(st.st_mode):
                    raise SandboxError("target exists and is not a regular file")
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(tmp, flags, 0o644, dir_fd=dir_fd)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.fsync(dir_fd)
        except OSError as exc:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
            raise _refusal(exc) from None
        except SandboxError:
            raise
        finally:
            os.close(dir_fd)
        return {"path": "/".join([*dirs, name]), "bytes": len(data)}

    def delete(self, path: str) -> dict[str, Any]:
        *dirs, name = self._parts(path, is_file=True)
        dir_fd = self._open_dir(dirs)
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise SandboxError("not a regular file")
            os.unlink(name, dir_fd=dir_fd)
        except OSError as exc:
            raise _refusal(exc) from None
        finally:
            os.close(dir_fd)
        return {"path": "/".join([*dirs, name]), "deleted": True}
