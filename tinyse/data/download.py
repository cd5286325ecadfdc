"""Fetch, verify and unpack a dataset archive, never leaving a half-written file under its final name.

    fetch_archive(url, md5, archive)          # download to a temporary name, rename once its MD5 checks out
    check_md5(archive, md5, title, url)       # an archive someone put there: its MD5, or a clear error
    extract_members(archive, members, folder, title=..., url=...)   # only the listed members, nothing else
    listed = read_sha256sums(folder)          # the SHA256SUMS file beside a folder, if there is one
    check_sha256(path, data, listed)          # a file's bytes against its entry there

A download goes to a temporary file and an archive is unpacked into a temporary
folder, both beside their final name, and each is renamed into place only once
complete and verified (a rename within one folder is atomic). On any error the
temporary file or folder is removed.

``title`` and ``url`` only make the messages say what the archive should have
been and where to get it again. ``tinyse.data.cifar`` is the one user.
"""
import gzip
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

CHECKSUM_FILE = "SHA256SUMS"


class DataError(Exception):
    """The data is there but unusable: a checksum mismatch, a corrupt archive, a malformed file."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The data (or one file of it) is not where it should be; the message says what to put where."""


class DownloadFailed(DataNotFoundError):
    """The network failed (no connection, a refused or broken transfer): ``downloading URL failed: REASON``."""


# --- download ------------------------------------------------------------------------------------


def download_url(url, destination, progress=True, chunk_size=1 << 20):
    """Copy ``url`` into the file ``destination``; return the MD5 (hex) of the bytes written.

    Shows a one-line progress bar on stderr when ``progress``. Network failures raise what
    ``urllib.request.urlopen`` raises: ``urllib.error.URLError``, ``http.client.HTTPException``, ``OSError``.
    """
    md5 = hashlib.md5(usedforsecurity=False)  # an integrity check, not security: fine on FIPS systems
    name = url.rsplit("/", 1)[-1]
    shown = None
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(destination, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(chunk_size):
                out.write(chunk)
                md5.update(chunk)
                done += len(chunk)
                if progress:
                    shown = _show_progress(name, done, total, shown)
    finally:
        if shown is not None:
            sys.stderr.write("\n")  # end the progress line, also before an error message
    return md5.hexdigest()


def _show_progress(name, done, total, shown):
    """Rewrite the progress line when the whole percent (or, size unknown, the whole MB) changes."""
    now = done * 100 // total if total else done >> 20
    if now != shown:
        if total:
            sys.stderr.write(f"\rdownloading {name}: {now:3d}% of {total / 2**20:.1f} MB")
        else:
            sys.stderr.write(f"\rdownloading {name}: {now} MB")
        sys.stderr.flush()
    return now


def fetch_archive(url, md5, archive, progress=True):
    """Download ``url`` to the path ``archive`` (a temporary name beside it until its MD5 checks out).

    Raises ``DownloadFailed`` when the network fails and ``DataError`` when the bytes
    have the wrong MD5; either way nothing is left behind.
    """
    archive = Path(archive)
    handle, partial = tempfile.mkstemp(prefix=f".{archive.name}.", suffix=".part", dir=archive.parent)
    os.close(handle)
    partial = Path(partial)
    try:
        try:
            actual = download_url(url, partial, progress)
        except (OSError, http.client.HTTPException) as error:  # URLError, timeouts, refused connections
            reason = getattr(error, "reason", error)
            raise DownloadFailed(f"downloading {url} failed: {reason}") from error
        if actual != md5:
            raise DataError(
                f"the download of {url} has MD5 {actual}, expected {md5}: it was damaged "
                f"on the way and has been deleted; try again"
            )
        os.replace(partial, archive)
    finally:
        partial.unlink(missing_ok=True)  # gone already after the rename; removes a partial or bad download
    return archive


def file_md5(path, chunk_size=1 << 20):
    """MD5 (hex) of a file, read in chunks."""
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            md5.update(chunk)
    return md5.hexdigest()


def check_md5(archive, md5, title, url):
    """A user-provided archive with the wrong MD5 is an error; the file is left for the user to inspect."""
    actual = file_md5(archive)
    if actual != md5:
        raise DataError(
            f"{archive} is corrupt or not the official {title} archive: its MD5 is {actual}, expected "
            f"{md5}. Delete it and download it again from {url} (or let tinyse download it)."
        )


# --- unpacking -----------------------------------------------------------------------------------


def extract_members(archive, members, folder, *, title, url, progress=True):
    """Unpack the ``members`` of the .tar.gz ``archive`` into ``folder`` (via a temporary folder); return it.

    members: {path inside the archive: file name in ``folder``}; every one must be there,
    and the archive's other members are skipped. Only these names are written, each by
    copying its bytes to a file we name, so no member can write outside the folder
    (tarfile's own ``extractall`` would follow the names and links inside the archive).
    """
    folder = Path(folder)
    if progress:
        print(f"unpacking {archive} into {folder}", file=sys.stderr)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        found = set()
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                member_name = _safe_member_name(member.name, archive)
                if member_name not in members:
                    continue  # e.g. the readme.html of the official CIFAR archives
                if not member.isfile():
                    raise DataError(f"{archive}: member {member.name} is not a regular file")
                with tar.extractfile(member) as source, open(staging / members[member_name], "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                found.add(member_name)
        missing = sorted(set(members) - found)
        if missing:
            raise DataError(
                f"{archive} lacks {', '.join(missing)}: it is truncated or not the {title} archive; "
                f"delete it and download it again from {url}"
            )
        try:
            os.rename(staging, folder)
        except OSError:
            if not folder.is_dir():  # else another process unpacked it meanwhile: use theirs
                raise
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise DataError(
            f"{archive} is truncated or corrupt ({error}); delete it and download it again from {url}"
        ) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after the rename
    return folder


def _safe_member_name(name, archive):
    """The member's path without a leading './'; an absolute path or a '..' is an error."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name:
        raise DataError(f"{archive} holds an unsafe member path {name!r}: not an official archive, refusing it")
    return str(path)  # PurePosixPath drops './' and repeated slashes


# --- SHA256SUMS ----------------------------------------------------------------------------------


def read_sha256sums(folder):
    """{file name: (sha256, sums file)} for the files of ``folder`` listed in a SHA256SUMS file beside it.

    Lines are ``HASH  folder/name`` (``sha256sum``'s format; ``HASH *folder/name`` in binary
    mode); entries for other folders are ignored. No SHA256SUMS file: an empty dict.
    """
    folder = Path(folder)
    sums = folder.parent / CHECKSUM_FILE
    if not sums.is_file():
        return {}
    listed = {}
    for line in sums.read_text().splitlines():
        digest, _, path = line.strip().partition(" ")
        path = PurePosixPath(path.strip().lstrip("*"))
        if len(path.parts) == 2 and path.parts[0] == folder.name:
            listed[path.parts[1]] = (digest.lower(), sums)
    return listed


def check_sha256(path, data, listed):
    """Raise ``DataError`` if ``data`` (the bytes of ``path``) differs from its entry in ``listed``, when it has one."""
    path = Path(path)
    if path.name in listed:
        digest, sums = listed[path.name]
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise DataError(f"{path} is damaged: its SHA-256 is {actual}, but {sums} lists {digest}")
