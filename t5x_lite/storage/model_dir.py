"""The run directory check, made before anything is written under it: locally, no file
in its place or above it; on an object store, a bucket this process can write to."""

import os
from collections.abc import Iterator

import jax
from etils import epath

from t5x_lite.errors import ConfigError
from t5x_lite.storage.paths import PathLike, is_uri, path


def check_model_dir(location: PathLike) -> epath.Path:
    """The run directory as a path; ConfigError (one line naming what to do) unless a
    run can be written there."""
    model_dir = path(location)
    if is_uri(model_dir):
        check_writable_bucket(model_dir, f"MODEL_DIR={model_dir}")
        return model_dir
    existing = next((p for p in _self_and_parents(model_dir) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = ("is a file" if existing == model_dir
                 else f"is under {existing}, which is a file")
        raise ConfigError(f"MODEL_DIR={model_dir} {where}, not a directory: point MODEL_DIR "
                          "at a new or existing directory.")
    return model_dir


def _self_and_parents(location: epath.Path) -> Iterator[epath.Path]:
    yield location
    yield from location.parents


def check_writable_bucket(location: epath.Path, label: str) -> None:
    """Writes and removes one small object under `location`: the bucket exists and the
    credentials found the ordinary way (Application Default Credentials) may write it.
    ConfigError starting with `label` if not."""
    probe = location / f".write-check-{jax.process_index()}-{os.getpid()}"
    try:
        probe.write_text("")
        probe.unlink(missing_ok=True)
    except Exception as error:  # noqa: BLE001  (each client raises its own types)
        raise ConfigError(f"{label}: {_explain(error, location)}") from None


def _explain(error: Exception, location: epath.Path) -> str:
    bucket = "/".join(str(location).split("/")[:3])
    text = f"{type(error).__name__} {error}".lower()
    if isinstance(error, FileNotFoundError) or "404" in text or "not found" in text:
        return (f"the bucket {bucket} does not exist; create it (gcloud storage buckets "
                "create) or point at an existing one.")
    if "credential" in text or "401" in text or "refresh" in text:
        return ("no usable Google Cloud credentials; run `gcloud auth application-default "
                "login` or set GOOGLE_APPLICATION_CREDENTIALS to a service account key.")
    if isinstance(error, PermissionError) or "403" in text or "forbidden" in text:
        return (f"the account in use may not write to {bucket}; grant it a role with "
                "storage.objects.create and storage.objects.delete (Storage Object User).")
    summary = " ".join(str(error).split())[:200]
    return f"cannot write there ({type(error).__name__}: {summary}); check the path and access."
