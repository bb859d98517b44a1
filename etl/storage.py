"""Lake locations that are local folders or object-store URIs (``s3://``, ``s3a://``, ``gs://``).

Spark reads and writes the lake through Hadoop (``s3a://``); everything else (the feature spec,
the Delta log that training workers read, predictions) goes through
``pyarrow.fs``, which needs no JVM. Both sides take their S3 endpoint from the standard
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` variables and their credentials from the AWS
default chain, so one environment points Spark, Petastorm and Ray at the same S3-compatible
store. pyarrow 12 (pinned by Petastorm) does not read those endpoint variables itself, hence
``s3_filesystem``.

Pure Python (no pyspark import).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

S3_SCHEMES = ("s3", "s3a", "s3n")


def is_uri(path: str | Path) -> bool:
    """True for ``scheme://...`` locations other than ``file://`` (those are local paths)."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def local_path(path: str | Path) -> str:
    text = str(path)
    return text[len("file://") :] if text.startswith("file://") else text


def join(base: str | Path, *parts: str) -> str:
    """``base/part/...`` for URIs and local paths alike (pathlib would eat a URI's ``//``)."""
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(local_path(base), *parts))


def parent_and_name(path: str | Path) -> tuple[str, str]:
    """(``s3a://b/lake``, ``scores``) for ``s3a://b/lake/scores``; the same for local paths."""
    if is_uri(path):
        parent, name = str(path).rstrip("/").rsplit("/", 1)
        return parent, name
    local = Path(local_path(path))
    return str(local.parent), local.name


def scheme(path: str | Path) -> str:
    return urlparse(str(path)).scheme if is_uri(path) else ""


def is_s3(path: str | Path) -> bool:
    """An ``s3://`` / ``s3a://`` / ``s3n://`` location (Spark then needs the S3A jars)."""
    return scheme(path) in S3_SCHEMES


def spark_uri(path: str | Path) -> str:
    """What Hadoop opens: ``s3://`` becomes ``s3a://`` (the Hadoop S3 connector)."""
    text = str(path)
    return "s3a://" + text.split("://", 1)[1] if scheme(text) in ("s3", "s3n") else text


def arrow_uri(path: str | Path) -> str:
    """What pyarrow and Petastorm open: ``s3a://`` becomes ``s3://``, local paths ``file:///``."""
    text = str(path)
    if is_s3(text):
        return "s3://" + text.split("://", 1)[1]
    if is_uri(text):
        return text
    return "file://" + os.path.abspath(local_path(text))


def s3_endpoint() -> str | None:
    """The S3-compatible endpoint URL from the environment (None: AWS itself)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def s3_filesystem() -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem on ``s3_endpoint()`` (path-style addressing) or on AWS."""
    kwargs: dict[str, object] = {}
    region = s3_region()
    if region:
        kwargs["region"] = region
    endpoint = s3_endpoint()
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**kwargs)


def s3fs_filesystem():
    """The same store through s3fs (fsspec), for libraries that want one (Petastorm)."""
    import s3fs

    region = s3_region()
    client = {"region_name": region} if region else {}
    return s3fs.S3FileSystem(endpoint_url=s3_endpoint(), client_kwargs=client)


def filesystem(path: str | Path) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI."""
    if not is_uri(path):
        return pafs.LocalFileSystem(), os.path.abspath(local_path(path))
    uri = arrow_uri(path)
    if scheme(uri) == "s3":
        return s3_filesystem(), uri.split("://", 1)[1].rstrip("/")
    return pafs.FileSystem.from_uri(uri)


def info(path: str | Path) -> pafs.FileInfo:
    fs, inner = filesystem(path)
    return fs.get_file_info(inner)


def is_file(path: str | Path) -> bool:
    return info(path).type == pafs.FileType.File


def is_dir(path: str | Path) -> bool:
    """A folder; on an object store, any prefix with objects under it."""
    fs, inner = filesystem(path)
    if fs.get_file_info(inner).type == pafs.FileType.Directory:
        return True
    if is_uri(path):  # some stores keep no folder markers: look for one object below
        selector = pafs.FileSelector(inner, allow_not_found=True, recursive=False)
        return bool(fs.get_file_info(selector))
    return False


def mtime_ns(path: str | Path) -> int:
    found = info(path)
    if found.type == pafs.FileType.NotFound or found.mtime_ns is None:
        raise FileNotFoundError(f"no file at {path}")
    return found.mtime_ns


def list_files(path: str | Path, recursive: bool = False) -> dict[str, int]:
    """Files below ``path`` (as locations of the same kind as ``path``) -> their mtime in ns;
    empty when ``path`` is absent. One listing, no request per file."""
    fs, inner = filesystem(path)
    selector = pafs.FileSelector(inner, allow_not_found=True, recursive=recursive)
    found = [i for i in fs.get_file_info(selector) if i.type == pafs.FileType.File]
    base = str(path).rstrip("/")
    return {join(base, i.path[len(inner) :].lstrip("/")): i.mtime_ns for i in found}


def list_dir(path: str | Path, recursive: bool = False) -> list[str]:
    """Files below ``path`` as locations of the same kind as ``path`` (sorted; none if absent)."""
    return sorted(list_files(path, recursive))


def read_text(path: str | Path) -> str:
    fs, inner = filesystem(path)
    if fs.get_file_info(inner).type != pafs.FileType.File:
        raise FileNotFoundError(f"no file at {path}")
    with fs.open_input_stream(inner) as stream:
        return stream.read().decode("utf-8")


def write_text(path: str | Path, text: str) -> str:
    """Write a whole file so that readers never see half of it.

    Local: a temp file in the same folder, then a rename. Object stores: one PUT, which the
    store makes visible all at once.
    """
    if is_uri(path):
        fs, inner = filesystem(path)
        with fs.open_output_stream(inner) as stream:
            stream.write(text.encode("utf-8"))
        return str(path)
    target = Path(local_path(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, target)
    return str(target)


def localize(path: str | Path, folder: str | Path) -> str:
    """A local copy of a file or folder for code that needs one (nothing copied when local)."""
    if not is_uri(path):
        return local_path(path)
    fs, inner = filesystem(path)
    found = fs.get_file_info(inner)
    if found.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"nothing at {path}")
    target = os.path.join(str(folder), inner.rstrip("/").rsplit("/", 1)[-1])
    if found.type == pafs.FileType.Directory:
        os.makedirs(target, exist_ok=True)
    pafs.copy_files(inner, target, source_filesystem=fs)
    return target
