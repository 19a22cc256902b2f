"""Compiled trees: a LightGBM booster compiled to machine code with lleaves, for scoring.

Prediction with LightGBM walks every tree through a generic interpreter; lleaves compiles the
same trees with LLVM into straight-line code, several times faster on one thread and equal to
LightGBM's probabilities to rounding (about 1e-15). Compiling takes seconds to a minute, so the
binary is cached per model and machine: the file name holds a hash of the booster text and one of
the platform (OS, architecture, Python, lleaves and llvmlite versions, host CPU and features).
The booster text stays the model; a cached binary is only ever derived from it.

Compiling can fail or be unavailable (no lleaves, an unsupported model, a read-only cache); then
the scorer predicts with LightGBM and says so (`IntentModel.predictor`). A compiled model is also
checked against LightGBM on the first rows it predicts, and set aside if they differ by more
than `TOLERANCE`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

LIGHTGBM = "lightgbm"
LLEAVES = "lleaves"
TOLERANCE = 1e-9  # largest difference from LightGBM's probabilities a compiled model may show
CHECK_ROWS = 256  # rows of the first batch predicted both ways
CACHE_ENV = "MICROMOMENT_CACHE_DIR"


def default_cache_dir() -> Path:
    """`$MICROMOMENT_CACHE_DIR`, else `$XDG_CACHE_HOME/micromoment/compiled`, else
    `~/.cache/micromoment/compiled`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "micromoment" / "compiled"


def platform_key() -> str:
    """What a compiled binary depends on besides the model, hashed: it runs only where this
    is the same."""
    import llvmlite.binding as llvm

    parts = [
        platform.system(),
        platform.machine(),
        f"py{sys.version_info.major}.{sys.version_info.minor}",
        f"lleaves {_version('lleaves')}",
        f"llvmlite {_version('llvmlite')}",
        llvm.get_host_cpu_name(),
        llvm.get_host_cpu_features().flatten(),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def model_key(booster_text: str) -> str:
    return hashlib.sha256(booster_text.encode()).hexdigest()[:24]


class CompiledTrees:
    """A booster compiled by lleaves; `predict` returns class probabilities like
    `modelling.booster_proba`."""

    def __init__(self, model, n_classes: int, binary: Path, fresh: bool = False):
        self.model = model
        self.n_classes = n_classes
        self.binary = binary
        self.fresh = fresh  # compiled by this call, rather than found in the cache

    def predict(self, X: np.ndarray, threads: int = 1) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float64)
        p = self.model.predict(X, n_jobs=max(1, int(threads)))
        if self.n_classes == 2:
            p = np.column_stack([1 - p, p])
        return np.asarray(p, dtype=float)


def compile_trees(
    booster_text: str, n_classes: int, cache_dir: Path | None = None
) -> CompiledTrees:
    """The booster compiled, from the cache when this model was compiled on this platform before;
    raises (ImportError, OSError, or lleaves' own errors) when it cannot be compiled.

    Processes that need the same model at once (the workers of one server, replicas sharing a
    cache) take turns on a lock beside its binary: one compiles it, the others wait and load it.
    The binary is written to a private file and renamed into place, so no reader ever sees half
    of one, even where the lock cannot be taken (a read-only cache, no `fcntl`).
    """
    import lleaves

    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    key = model_key(booster_text)
    model_file = folder / f"{key}.txt"
    if not model_file.exists():
        _write_atomically(model_file, booster_text.encode())
    binary = folder / f"{key}-{platform_key()}.o"
    digest = binary.with_name(binary.name + ".sha256")
    model = lleaves.Model(model_file=str(model_file))
    with _turn(binary.with_name(binary.name + ".lock")):
        if _intact(binary, digest):
            model.compile(cache=str(binary))
            return CompiledTrees(model, n_classes, binary)
        # LLVM aborts the process on a damaged object file: only a binary whose checksum was
        # written after it compiled is ever loaded; anything else is compiled again
        private = folder / f".{binary.name}.{os.getpid()}.tmp"
        try:
            model.compile(cache=str(private))
            checksum = hashlib.sha256(private.read_bytes()).hexdigest()
            os.replace(private, binary)
            _write_atomically(digest, checksum.encode())
        finally:
            private.unlink(missing_ok=True)
    return CompiledTrees(model, n_classes, binary, fresh=True)


@contextlib.contextmanager
def _turn(lock: Path):
    """Holds an exclusive lock on the file `lock` (waiting for it) while the block runs; the
    kernel releases it if the process dies. Without `fcntl`, or where the file cannot be opened
    (a read-only cache), the block runs unlocked."""
    try:
        import fcntl

        handle = open(lock, "a+b")  # noqa: SIM115 - held open for the block
    except (ImportError, OSError):
        yield
        return
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


def is_cached(booster_text: str, cache_dir: Path | None = None) -> bool:
    """Whether this model is compiled on this platform already (loading it costs milliseconds)."""
    try:
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        binary = folder / f"{model_key(booster_text)}-{platform_key()}.o"
    except Exception:  # no llvmlite: nothing can be cached
        return False
    return _intact(binary, binary.with_name(binary.name + ".sha256"))


def _intact(binary: Path, digest: Path) -> bool:
    """Whether a cached binary is whole: present, with the checksum written when it compiled."""
    if not (binary.exists() and digest.exists()):
        return False
    return hashlib.sha256(binary.read_bytes()).hexdigest() == digest.read_text().strip()


def _write_atomically(path: Path, data: bytes) -> None:
    private = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        private.write_bytes(data)
        os.replace(private, path)
    finally:
        private.unlink(missing_ok=True)


def largest_difference(a: np.ndarray, b: np.ndarray) -> float:
    """The largest absolute difference of two probability matrices (0 for empty ones)."""
    return float(np.abs(a - b).max()) if a.size else 0.0
