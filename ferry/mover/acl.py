"""POSIX ACLs through libacl (ctypes): read, compare, validate and set them.

An ACL is carried as libacl's canonical short text (`u::rw-,u:1000:r--,g::r--,m::r--,o::---`:
abbreviated tags, numeric ids, entries in libacl's order), so two ACLs compare as strings,
show in logs as they are, and could cross a wire as one. An access ACL equivalent to the
mode bits (only u::, g::, o::) is "" (no ACL: the mode says it all); a directory without a
default ACL has "" there too. Text from anywhere but this host's own files (a peer, a spec)
goes through `parse` first: bounded, parsed by acl_from_text, checked by acl_valid.

pylibacl has no wheels (it needs libacl1-dev to build); libacl.so.1 itself is in every
Debian-based image, so a small binding of the few calls needed does. Where it cannot be
loaded, `--preserve acls` is refused (`require`), never ignored.
"""

from __future__ import annotations

import ctypes
import errno
import os
from functools import cache
from typing import NamedTuple

from ferry.mover.errors import ErrorKind, FerryError

ACL_TYPE_ACCESS = 0x8000
ACL_TYPE_DEFAULT = 0x4000
_TEXT_NUMERIC_IDS = 0x08
_TEXT_ABBREVIATE = 0x10

# An ACL's text from elsewhere is at most this long: a filesystem holds a few hundred entries
# at most (ext4: one 4 KiB block of xattrs), each under 25 characters in short form.
MAX_TEXT = 16 * 1024
# The short form's alphabet: tags, numeric ids, permissions, separators. No names: parsing a
# peer's `u:someone:r` would make this host look the name up (NSS, perhaps LDAP).
_ALPHABET = frozenset("ugmo:,rwx-0123456789")


class AclText(NamedTuple):
    """A file's or directory's ACLs, canonical text each; "" for none."""

    access: str = ""
    default: str = ""  # directories only


NO_ACL = AclText()


class _Lib:
    """libacl's calls with their C signatures."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        p, c, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        self.get_file = _fn(lib.acl_get_file, p, [c, i])
        self.get_fd = _fn(lib.acl_get_fd, p, [i])
        self.to_any_text = _fn(lib.acl_to_any_text, p, [p, c, ctypes.c_char, i])
        self.from_text = _fn(lib.acl_from_text, p, [c])
        self.from_mode = _fn(lib.acl_from_mode, p, [ctypes.c_uint])
        self.valid = _fn(lib.acl_valid, i, [p])
        self.entries = _fn(lib.acl_entries, i, [p])
        self.equiv_mode = _fn(lib.acl_equiv_mode, i, [p, p])
        self.set_file = _fn(lib.acl_set_file, i, [c, i, p])
        self.set_fd = _fn(lib.acl_set_fd, i, [i, p])
        self.delete_def_file = _fn(lib.acl_delete_def_file, i, [c])
        self.free = _fn(lib.acl_free, i, [p])


def _fn(f: ctypes._NamedFuncPointer, res: object, args: list[object]) -> ctypes._NamedFuncPointer:
    f.restype = res  # type: ignore[assignment]
    f.argtypes = args  # type: ignore[assignment]
    return f


@cache
def _load() -> _Lib | str:
    """The binding, or why there is none."""
    name = "libacl.so.1"  # the soname itself: ctypes.util.find_library runs ldconfig
    try:
        return _Lib(ctypes.CDLL(name, use_errno=True))
    except (OSError, AttributeError) as exc:
        return f"libacl ({name}) cannot be loaded: {exc}"


def unavailable() -> str | None:
    """Why ACLs cannot be handled on this host, or None when they can."""
    got = _load()
    return got if isinstance(got, str) else None


def require() -> None:
    """Refuse `--preserve acls` where libacl is missing (never accept and ignore it)."""
    why = unavailable()
    if why is not None:
        raise FerryError(ErrorKind.USAGE, f"--preserve acls: {why} (install libacl1)")


def refuse_unheld(*sides: tuple[bool, str]) -> None:
    """Refuse `--preserve acls` where libacl is missing or an endpoint (held, described)
    cannot hold POSIX ACLs: they would be neither copied nor compared there."""
    require()
    for held, where in sides:
        if not held:
            raise FerryError(
                ErrorKind.USAGE,
                "--preserve acls: this endpoint cannot hold POSIX ACLs (local paths can, and "
                "ferry:// servers whose `ferry serve` offers them: a Ferry with ACLs over the "
                "wire and libacl); leave acls out of --preserve",
                where,
            )


HELD_BY = ("local", "ferry")  # endpoint kinds that can hold POSIX ACLs


def refuse_kinds(*kinds: str) -> None:
    """The same refusal by endpoint kind, before connecting to anything (a ferry:// server
    is asked once connected: `refuse_unheld` on its `Holds`)."""
    require()
    for kind in kinds:
        if kind not in HELD_BY:
            raise FerryError(
                ErrorKind.USAGE,
                f"--preserve acls: {kind} endpoints cannot hold POSIX ACLs (only local paths "
                "and ferry:// servers can); leave acls out of --preserve",
            )


def _lib() -> _Lib:
    got = _load()
    if isinstance(got, str):
        raise FerryError(ErrorKind.USAGE, f"--preserve acls: {got}")
    return got


def _oserror(what: str, path: str) -> OSError:
    e = ctypes.get_errno()
    return OSError(e, f"{what}: {os.strerror(e)}", path)


def _text(lib: _Lib, acl: int, access: bool) -> str:
    """The canonical text of `acl` (freed here); "" for a minimal access ACL or none."""
    try:
        if lib.entries(acl) <= 0 or (access and lib.equiv_mode(acl, None) == 0):
            return ""
        raw = lib.to_any_text(acl, None, b",", _TEXT_ABBREVIATE | _TEXT_NUMERIC_IDS)
        if not raw:
            raise OSError(ctypes.get_errno(), "acl_to_any_text failed")
        try:
            return ctypes.string_at(raw).decode("ascii")
        finally:
            lib.free(raw)
    finally:
        lib.free(acl)


def read_path(path: str, is_dir: bool) -> AclText | None:
    """The ACLs of a file or directory (following no symlink: callers pass only those);
    None where the filesystem has no ACLs (nothing to compare there)."""
    lib = _lib()
    b = os.fsencode(path)
    acl = lib.get_file(b, ACL_TYPE_ACCESS)
    if not acl:
        if ctypes.get_errno() in _UNSUPPORTED:
            return None
        raise _oserror("cannot read its ACL", path)
    access = _text(lib, acl, True)
    default = ""
    if is_dir:
        dacl = lib.get_file(b, ACL_TYPE_DEFAULT)
        if not dacl:
            raise _oserror("cannot read its default ACL", path)
        default = _text(lib, dacl, False)
    return AclText(access, default)


def read_fd(fd: int) -> str | None:
    """The access ACL of an open file; None where the filesystem has none."""
    lib = _lib()
    acl = lib.get_fd(fd)
    if not acl:
        if ctypes.get_errno() in _UNSUPPORTED:
            return None
        raise _oserror("cannot read its ACL", f"fd {fd}")
    return _text(lib, acl, True)


def parse(text: str, what: str = "ACL") -> str:
    """Untrusted ACL text (a peer's, a spec's) made canonical, or a USAGE error saying why
    it is refused: too long, outside the short form's alphabet, unparsable or invalid."""
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise FerryError(ErrorKind.USAGE, f"{what}: longer than {MAX_TEXT} characters")
    if text == "":
        return ""
    if not _ALPHABET.issuperset(text):
        raise FerryError(
            ErrorKind.USAGE, f"{what} {text[:80]!r}: not an ACL in short form with numeric ids"
        )
    lib = _lib()
    acl = lib.from_text(text.encode("ascii"))
    if not acl:
        raise FerryError(ErrorKind.USAGE, f"{what} {text[:80]!r}: not a valid ACL")
    if lib.valid(acl) != 0:
        lib.free(acl)
        raise FerryError(ErrorKind.USAGE, f"{what} {text[:80]!r}: not a valid ACL")
    return _text(lib, acl, False)


def _from_text(lib: _Lib, text: str, path: str) -> int:
    acl = lib.from_text(text.encode("ascii"))
    if not acl or lib.valid(acl) != 0:
        if acl:
            lib.free(acl)
        raise OSError(errno.EINVAL, f"invalid ACL {text[:80]!r}", path)
    return int(acl)


_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOTSUP)


def _set(lib: _Lib, call: object, acl: int, what: str, path: str, minimal: bool) -> None:
    """Set `acl` (freed here). A minimal one on a filesystem without ACLs is already there."""
    try:
        if call(acl) != 0:  # type: ignore[operator]
            e = ctypes.get_errno()
            if minimal and e in _UNSUPPORTED:
                return
            if e in (errno.ENOSPC, errno.E2BIG):  # one xattr's worth (ext4: ~500 entries)
                raise OSError(
                    errno.E2BIG, f"{what}: more ACL entries than this filesystem holds", path
                )
            raise _oserror(what, path)
    finally:
        lib.free(acl)


def set_fd(fd: int, access: str, path: str) -> None:
    """Make an open file's access ACL `access` ("" : only its mode bits, so an ACL the file
    inherited from its directory's default goes). Call after its mode is set."""
    lib = _lib()
    if access:
        acl = _from_text(lib, access, path)
    else:
        acl = lib.from_mode(os.fstat(fd).st_mode & 0o777)
        if not acl:
            raise _oserror("acl_from_mode", path)
    _set(lib, lambda a: lib.set_fd(fd, a), acl, "cannot set its ACL", path, not access)


def set_path(path: str, acls: AclText, is_dir: bool) -> None:
    """Make a file's or directory's ACLs `acls` exactly (after its mode is set)."""
    lib = _lib()
    b = os.fsencode(path)
    if acls.access:
        acl = _from_text(lib, acls.access, path)
    else:
        acl = lib.from_mode(os.stat(path).st_mode & 0o777)
        if not acl:
            raise _oserror("acl_from_mode", path)
    _set(
        lib,
        lambda a: lib.set_file(b, ACL_TYPE_ACCESS, a),
        acl,
        "cannot set its ACL",
        path,
        not acls.access,
    )
    if not is_dir:
        return
    if acls.default:
        dacl = _from_text(lib, acls.default, path)
        _set(
            lib,
            lambda a: lib.set_file(b, ACL_TYPE_DEFAULT, a),
            dacl,
            "cannot set its default ACL",
            path,
            False,
        )
    elif lib.delete_def_file(b) != 0 and ctypes.get_errno() not in _UNSUPPORTED:
        raise _oserror("cannot remove its default ACL", path)
