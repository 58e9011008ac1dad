"""Local paths and object-storage URIs behind one small API (pyarrow.fs).

Every directory option (prepared data, RUN_DIR, TUNE_DIR, checkpoints) accepts a local path or a
URI whose scheme pyarrow knows: s3://, gs://, hdfs://, file://. Local writes are atomic (a temp
name, then a rename); on object stores an object appears whole when its upload completes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from raygan.core.errors import RayganError

CACHE_VAR = "RAYGAN_CACHE_DIR"

HASH_BLOCK_BYTES = 1 << 20  # sha256 streams files in blocks of this size


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def absolute(path: str | Path) -> str:
    """A URI as given; a local path made absolute (Ray workers and Tune trials run elsewhere)."""
    return str(path) if is_uri(path) else os.path.abspath(os.path.expanduser(str(path)))


def join(root: str | Path, *names: str) -> str:
    return "/".join([str(root).rstrip("/"), *names])


def filesystem(path: str | Path) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI with a scheme (file://, s3://, ...)."""
    if not is_uri(path):
        return pafs.LocalFileSystem(), absolute(path)
    try:
        return pafs.FileSystem.from_uri(str(path))
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise RayganError(f"cannot open {path}: {exc}") from None


def file_type(path: str | Path) -> pafs.FileType:
    return fs_type(*filesystem(path))


def is_file(path: str | Path) -> bool:
    return file_type(path) == pafs.FileType.File


def read_bytes(path: str | Path) -> bytes:
    return fs_read(*filesystem(path))


def read_text(path: str | Path) -> str:
    return read_bytes(path).decode()


def write_text(path: str | Path, text: str) -> None:
    """Readers see the old or the new content, never a part."""
    write_bytes(path, text.encode())


def write_bytes(path: str | Path, data: bytes) -> None:
    """Readers see the old or the new content, never a part."""
    if not is_uri(path):
        local = Path(path)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, local)
        return
    fs, inner = filesystem(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    fs_write(fs, inner, data)


# The same on a filesystem already opened (a path inside `fs`, as `filesystem` returns it).
def fs_type(fs: pafs.FileSystem, path: str) -> pafs.FileType:
    return fs.get_file_info(path).type


def fs_read(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path, compression=None) as f:
        return f.read()


def fs_write(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """No temp name: an object appears whole when its upload completes; local callers write into
    a directory that is renamed into place afterwards."""
    with fs.open_output_stream(path, compression=None) as f:
        f.write(data)


def fs_sha256(fs: pafs.FileSystem, path: str) -> str:
    """sha256 of a file, streamed HASH_BLOCK_BYTES at a time."""
    digest = hashlib.sha256()
    with fs.open_input_stream(path, compression=None) as f:
        while block := f.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def delete(path: str | Path) -> None:
    """Remove a file or a directory tree; nothing there is fine."""
    fs, inner = filesystem(path)
    kind = fs.get_file_info(inner).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(inner)
    elif kind == pafs.FileType.File:
        fs.delete_file(inner)


def upload_dir(local_dir: str | Path, dest: str | Path) -> None:
    """Copy a local directory to `dest`, replacing what was there (atomically when local)."""
    if not is_uri(dest):
        _copy_local_dir(Path(local_dir), Path(dest))
        return
    fs, inner = filesystem(dest)
    if fs.get_file_info(inner).type == pafs.FileType.Directory:
        fs.delete_dir(inner)
    fs.create_dir(inner, recursive=True)
    pafs.copy_files(str(local_dir), inner, destination_filesystem=fs)


def download_dir(src: str | Path, local_dir: str | Path) -> Path:
    """Copy `src` (a URI or a local directory) to a local directory, replacing it."""
    local_dir = Path(local_dir)
    if not is_uri(src):
        _copy_local_dir(Path(src), local_dir)
        return local_dir
    fs, inner = filesystem(src)
    tmp = Path(tempfile.mkdtemp(prefix=f".{local_dir.name}.", dir=_parent(local_dir)))
    try:
        pafs.copy_files(inner, str(tmp), source_filesystem=fs)
        replace_dir(tmp, local_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return local_dir


def cache_dir(uri: str, kind: str) -> Path:
    """A stable local directory for a copy of `uri` (e.g. a checkpoint read from object storage),
    under $RAYGAN_CACHE_DIR where set, else the system's temp dir."""
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return Path(os.environ.get(CACHE_VAR) or tempfile.gettempdir()) / f"raygan-{kind}" / key


def sync(local_dir: Path, dest: str | Path) -> None:
    """Upload a staged directory's files to `dest` (a no-op when `dest` is the local dir itself)."""
    if not is_uri(dest):
        return
    fs, inner = filesystem(dest)
    fs.create_dir(inner, recursive=True)
    pafs.copy_files(str(local_dir), inner, destination_filesystem=fs)


def _parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent


def _copy_local_dir(src: Path, dst: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=_parent(dst)))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        replace_dir(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(tmp: Path, directory: Path) -> None:
    old = None
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        os.replace(directory, old)
    os.replace(tmp, directory)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
