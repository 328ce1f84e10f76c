"""Steps shared by the Stable Diffusion 1.x/2.x and SDXL presets, one module per pipeline stage.

Each step reproduces the arithmetic of the standard pipelines (including the order in which a seeded
generator is consumed), so a preset gives the same images as those pipelines for the same arguments.
Family-specific steps (text encoding, SDXL's added conditioning) live in `presets.sd` / `presets.sdxl`;
the helpers in `utils` serve every family (Flux included).

- `encoders`: VAE encoder (image-to-image) and the inpainting image/mask preparation
- `before_denoise`: batch expansion, timesteps, initial latents, ControlNet inputs
- `denoise`: the denoise loop steps and loop wrappers
- `decoders`: VAE decode
- `auto`: the auto steps that pick a workflow from the inputs
- `ip_adapter`: the IP-Adapter image-embedding steps
- `utils`: component lookups, size and batch checks, latent scaling, default component specs
"""

from . import auto, before_denoise, decoders, denoise, encoders, ip_adapter, utils
from .auto import *  # noqa: F403  (each module's __all__)
from .before_denoise import *  # noqa: F403  (each module's __all__)
from .decoders import *  # noqa: F403  (each module's __all__)
from .denoise import *  # noqa: F403  (each module's __all__)
from .encoders import *  # noqa: F403  (each module's __all__)
from .ip_adapter import *  # noqa: F403  (each module's __all__)
from .utils import *  # noqa: F403  (each module's __all__)

__all__ = [name for module in (auto, before_denoise, decoders, denoise, encoders, ip_adapter,
                                                             utils) for name in module.__all__]
