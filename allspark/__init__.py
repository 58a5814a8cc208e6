"""AllSpark: a multimodal spatiotemporal model and the library behind the pipeline's flows."""

import functools
import hashlib
from pathlib import Path


@functools.cache
def source_digest() -> str:
    """A hash of this package's source code, so cached pipeline steps are redone when it changes."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
