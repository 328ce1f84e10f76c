"""How blocks run: ModularPipeline and the Hub format of modular repos."""

from .pipeline import ComponentLoadError, ModularPipeline
from .serialization import TrustRemoteCodeError

__all__ = ["ComponentLoadError", "ModularPipeline", "TrustRemoteCodeError"]
