"""Defaults a model recommends for itself: ``recommended.json`` beside its weights.

A model trained for refseg can say which settings suit it, so that a user who gives none
gets them instead of the paper's values (which were chosen for OpenAI's CLIPs)::

    {"global-local": {"alpha": 0.5, "pixels": "clean"}}

Keys are system names; values are that system's options. The shipped ``shapes-vit`` and
``shapes-rn`` carry one. Precedence, recorded per value in ``describe()["value_sources"]``
(and so in eval's ``config.json``): the user's value, then the model's, then (eval only) the
paper's per-dataset alpha, then the system's default. The file is data: read as JSON, size
checked, never executed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from refseg.errors import CheckpointFormatError

RECOMMENDED_FILE = "recommended.json"
# A recommendation is a few settings; anything larger is not one.
MAX_BYTES = 64 * 1024


def model_directory(source: str | os.PathLike) -> Path | None:
    """The directory holding CLIP ``source``'s files (a packaged model's, a local
    checkpoint's), or ``None`` for a Hub name or an unknown source."""
    from refseg.clip.load import PACKAGED_MODELS, _canonical_name, packaged_model_dir

    path = Path(source).expanduser()
    if path.exists():
        return path if path.is_dir() else path.parent
    canonical = _canonical_name(str(source))
    if canonical in PACKAGED_MODELS:
        return packaged_model_dir(canonical)
    return None


def recommended_defaults(source: str | os.PathLike | None, system: str) -> dict[str, Any]:
    """The options model ``source`` recommends for ``system`` (``{}`` when none).

    Raises:
        CheckpointFormatError: the file is too large, not JSON, or not a mapping of options.
    """
    directory = model_directory(source) if source is not None else None
    if directory is None or not (directory / RECOMMENDED_FILE).is_file():
        return {}
    path = directory / RECOMMENDED_FILE
    if path.stat().st_size > MAX_BYTES:
        raise CheckpointFormatError(f"{path} is over {MAX_BYTES} bytes: not a recommendation")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointFormatError(f"{path} is not valid JSON: {exc}") from None
    section = data.get(system, {}) if isinstance(data, dict) else None
    if not isinstance(section, dict) or not all(isinstance(k, str) for k in section):
        raise CheckpointFormatError(f"{path}: {system!r} must map option names to values")
    return dict(section)
