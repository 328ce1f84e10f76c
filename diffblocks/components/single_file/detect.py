"""Which model family a single-file checkpoint holds, and which components, read from its keys and shapes.

The heuristics are the reference implementation's (diffusers `infer_diffusers_model_type`), extended with
structural checks that also hold for small test models:

* Flux (BFL layout): `double_blocks.0.img_attn.norm.key_norm.scale` (optionally under `model.diffusion_model.`);
  FLUX.1-dev has a guidance embedding (`guidance_in.*`), FLUX.1-schnell does not.
* SD / SDXL (LDM layout): the UNet under `model.diffusion_model.`. SDXL UNets have an added embedding
  (`label_emb.0.0.weight`); the refiner conditions on OpenCLIP-G alone (`conditioner.embedders.0.model.*`) or,
  for a UNet-only file, a 2560-wide added embedding / 1280-wide cross-attention. SD 2.x has 1024-wide cross
  attention (OpenCLIP-H, `cond_stage_model.model.*`) and linear transformer projections; SD 1.x 768-wide CLIP-L
  (`cond_stage_model.transformer.*`). A 9-channel `conv_in` is an inpainting UNet.
* SD 2.x: like the reference, a file is taken as the 768-v model (v-prediction, upcast attention) unless it records
  `global_step` 875000 (the 512 base model); pass `prediction_type="epsilon"` for a 2.x base checkpoint.
* ControlNet (LDM layout): `input_hint_block.0.weight`, under `control_model.` or at the top level; a ControlNet
  file already in diffusers names (`controlnet_cond_embedding.conv_in.weight`, how SDXL ControlNets ship) loads as is.
* A LoRA file (keys with `lora_up` / `lora_down` / `lora_A` / `lora_B`) is refused with how to load it instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..modeling import CheckpointError
from .reader import SingleFile

__all__ = ["FAMILIES", "Detected", "FamilyInfo", "LoraFileError", "UnknownCheckpointError", "detect"]

LDM_UNET = "model.diffusion_model."
SD1_CLIP = "cond_stage_model.transformer."
SD2_OPENCLIP = "cond_stage_model.model."
SDXL_CLIP = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP = "conditioner.embedders.1.model."
REFINER_OPENCLIP = "conditioner.embedders.0.model."
VAE_PREFIXES = ("first_stage_model.", "vae.")


class UnknownCheckpointError(CheckpointError):
    """The file's keys match no supported model family."""


class LoraFileError(CheckpointError):
    """A LoRA (adapter) file was passed where a full checkpoint is expected."""


@dataclass(frozen=True)
class FamilyInfo:
    """A model family a single file can hold: the preset that runs it and the standard pipeline it converts to."""

    name: str
    title: str
    preset: str  # "sd" | "sdxl" | "flux" | "" (a lone model, not a pipeline)
    pipeline_class: str  # model_index.json `_class_name` of the converted folder
    default_repo: str  # the published diffusers repo whose configs are shipped (tokenizers come from there)
    markers: tuple[str, ...]  # key prefixes the family's files have (used to rank near misses)


FAMILIES: dict[str, FamilyInfo] = {f.name: f for f in (
    FamilyInfo("sd15", "Stable Diffusion 1.x", "sd", "StableDiffusionPipeline",
               "stable-diffusion-v1-5/stable-diffusion-v1-5", (LDM_UNET + "input_blocks.", SD1_CLIP, VAE_PREFIXES[0])),
    FamilyInfo("sd15_inpaint", "Stable Diffusion 1.x inpainting", "sd", "StableDiffusionInpaintPipeline",
               "stable-diffusion-v1-5/stable-diffusion-inpainting", (LDM_UNET + "input_blocks.", SD1_CLIP, VAE_PREFIXES[0])),
    FamilyInfo("sd21", "Stable Diffusion 2.x (768-v)", "sd", "StableDiffusionPipeline",
               "stabilityai/stable-diffusion-2-1", (LDM_UNET + "input_blocks.", SD2_OPENCLIP, VAE_PREFIXES[0])),
    FamilyInfo("sd21_base", "Stable Diffusion 2.x base (512)", "sd", "StableDiffusionPipeline",
               "stabilityai/stable-diffusion-2-1-base", (LDM_UNET + "input_blocks.", SD2_OPENCLIP, VAE_PREFIXES[0])),
    FamilyInfo("sd2_inpaint", "Stable Diffusion 2.x inpainting", "sd", "StableDiffusionInpaintPipeline",
               "stabilityai/stable-diffusion-2-inpainting", (LDM_UNET + "input_blocks.", SD2_OPENCLIP, VAE_PREFIXES[0])),
    FamilyInfo("sdxl", "Stable Diffusion XL base", "sdxl", "StableDiffusionXLPipeline",
               "stabilityai/stable-diffusion-xl-base-1.0",
               (LDM_UNET + "label_emb.", SDXL_CLIP, SDXL_OPENCLIP, VAE_PREFIXES[0])),
    FamilyInfo("sdxl_refiner", "Stable Diffusion XL refiner", "sdxl", "StableDiffusionXLImg2ImgPipeline",
               "stabilityai/stable-diffusion-xl-refiner-1.0", (LDM_UNET + "label_emb.", REFINER_OPENCLIP, VAE_PREFIXES[0])),
    FamilyInfo("sdxl_inpaint", "Stable Diffusion XL inpainting", "sdxl", "StableDiffusionXLInpaintPipeline",
               "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
               (LDM_UNET + "label_emb.", SDXL_CLIP, SDXL_OPENCLIP, VAE_PREFIXES[0])),
    FamilyInfo("flux_dev", "FLUX.1-dev transformer", "flux", "FluxPipeline", "black-forest-labs/FLUX.1-dev",
               ("double_blocks.", "single_blocks.", "guidance_in.")),
    FamilyInfo("flux_schnell", "FLUX.1-schnell transformer", "flux", "FluxPipeline", "black-forest-labs/FLUX.1-schnell",
               ("double_blocks.", "single_blocks.", "final_layer.")),
    FamilyInfo("controlnet", "ControlNet (SD 1.x / 2.x, LDM layout)", "", "", "lllyasviel/control_v11p_sd15_canny",
               ("control_model.", "input_hint_block.", "zero_convs.")),
    FamilyInfo("vae", "VAE (LDM layout)", "", "", "stabilityai/sd-vae-ft-mse",
               ("encoder.down.", "decoder.up.", "encoder.mid.")),
)}


@dataclass
class Detected:
    """What a file holds: the family and, per component name, the key prefix and layout of its tensors."""

    family: FamilyInfo
    components: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (layout, key prefix)
    notes: list[str] = field(default_factory=list)
    global_step: int | None = None

    @property
    def prediction_type(self) -> str:
        return "v_prediction" if self.family.name == "sd21" else "epsilon"

    @property
    def upcast_attention(self) -> bool:
        return self.family.name == "sd21"


_LORA_RE = re.compile(r"(lora_up|lora_down|lora_A|lora_B|lora\.up|lora\.down|\.hada_w1|\.lokr_w1)")


def _first(keys: list[str], pattern: str) -> str | None:
    regex = re.compile(pattern)
    return next((k for k in keys if regex.fullmatch(k)), None)


def _context_dim(f: SingleFile, prefix: str) -> int | None:
    key = _first(f.keys, re.escape(prefix) + r"(input_blocks|middle_block)\.\d+\.\d+\.transformer_blocks\.0\.attn2\.to_k\.weight")
    return f.shape(key)[-1] if key else None


def _is_lora(keys: list[str]) -> bool:
    hits = sum(1 for k in keys if _LORA_RE.search(k))
    return hits > 0 and hits >= len(keys) // 3


def _vae_prefix(f: SingleFile) -> str | None:
    for prefix in VAE_PREFIXES:
        if prefix + "encoder.conv_in.weight" in f or prefix + "decoder.conv_in.weight" in f:
            return prefix
    return None


def _global_step(f: SingleFile) -> int | None:
    if "global_step" in f:
        value = f.read("global_step")
        return int(value.reshape(-1)[0].item()) if value.numel() else None
    step = f.metadata.get("global_step") or f.metadata.get("ss_steps")
    return int(step) if step and str(step).isdigit() else None


def _detect_ldm(f: SingleFile, found: Detected) -> str:
    in_channels = f.shape(LDM_UNET + "input_blocks.0.0.weight")[1]
    if in_channels not in (4, 9):
        raise UnknownCheckpointError(
            f"{f.path}: an LDM UNet with {in_channels} input channels (4 = text-to-image, 9 = inpainting are "
            "supported; 8 is InstructPix2Pix, which is not)."
        )
    inpaint = in_channels == 9
    context = _context_dim(f, LDM_UNET)
    if LDM_UNET + "label_emb.0.0.weight" in f:
        adm = f.shape(LDM_UNET + "label_emb.0.0.weight")[1]
        has_base_encoders = (SDXL_OPENCLIP + "token_embedding.weight" in f
                             or SDXL_CLIP + "text_model.embeddings.position_embedding.weight" in f)
        refiner = REFINER_OPENCLIP + "token_embedding.weight" in f or (
            not has_base_encoders and (adm == 2560 or context == 1280))
        if refiner:
            name = "sdxl_refiner"
        else:
            name = "sdxl_inpaint" if inpaint else "sdxl"
        return name
    proj_in = _first(f.keys, re.escape(LDM_UNET) + r"input_blocks\.\d+\.1\.proj_in\.weight")
    linear_proj = proj_in is not None and len(f.shape(proj_in)) == 2
    sd2 = context == 1024 or SD2_OPENCLIP + "token_embedding.weight" in f or (
        context != 768 and linear_proj and SD1_CLIP + "text_model.embeddings.position_embedding.weight" not in f)
    if not sd2:
        return "sd15_inpaint" if inpaint else "sd15"
    if inpaint:
        return "sd2_inpaint"
    found.global_step = _global_step(f)
    if found.global_step == 875000:
        found.notes.append("global_step 875000: the SD 2.x 512 base model (epsilon prediction)")
        return "sd21_base"
    found.notes.append(
        "SD 2.x file taken as the 768-v model (v-prediction, upcast attention) as the reference does; pass "
        "prediction_type='epsilon' (and upcast_attention=False) for a 2.x base model"
    )
    return "sd21"


def _ldm_components(f: SingleFile, found: Detected) -> None:
    comps = found.components
    comps["unet"] = ("ldm", LDM_UNET)
    vae = _vae_prefix(f)
    if vae is not None:
        comps["vae"] = ("ldm", vae)
    if SD1_CLIP + "text_model.embeddings.position_embedding.weight" in f:
        comps["text_encoder"] = ("clip", SD1_CLIP)
    if SD2_OPENCLIP + "token_embedding.weight" in f:
        comps["text_encoder"] = ("openclip", SD2_OPENCLIP)
    if SDXL_CLIP + "text_model.embeddings.position_embedding.weight" in f:
        comps["text_encoder"] = ("clip", SDXL_CLIP)
    if SDXL_OPENCLIP + "token_embedding.weight" in f:
        comps["text_encoder_2"] = ("openclip", SDXL_OPENCLIP)
    if REFINER_OPENCLIP + "token_embedding.weight" in f:
        comps["text_encoder_2"] = ("openclip", REFINER_OPENCLIP)


def detect(f: SingleFile) -> Detected:
    """The family and components of an open single file; raises LoraFileError / UnknownCheckpointError."""
    keys = f.keys
    if _is_lora(keys):
        raise LoraFileError(
            f"{f.path} is a LoRA adapter file ({len(keys)} tensors with lora_up/lora_down or lora_A/lora_B keys), "
            "not a model checkpoint. Load the base model first, then apply it: "
            "pipe = ModularPipeline.from_single_file('base.safetensors'); pipe.load_lora_weights("
            f"'{f.path}')."
        )
    for prefix in ("", LDM_UNET):
        if prefix + "double_blocks.0.img_attn.norm.key_norm.scale" in f:
            img_in = f.shape(prefix + "img_in.weight")[1] if prefix + "img_in.weight" in f else 64
            if img_in != 64:
                raise UnknownCheckpointError(
                    f"{f.path}: a Flux transformer with {img_in} input features (64 = FLUX.1 dev/schnell are "
                    "supported; 384 is FLUX.1 Fill and 128 FLUX.1 Depth, which are not)."
                )
            name = "flux_dev" if prefix + "guidance_in.in_layer.bias" in f else "flux_schnell"
            found = Detected(FAMILIES[name], {"transformer": ("bfl", prefix)})
            return found
    if LDM_UNET + "input_blocks.0.0.weight" in f:
        found = Detected(FAMILIES["sd15"])
        found.family = FAMILIES[_detect_ldm(f, found)]
        _ldm_components(f, found)
        return found
    for prefix in ("control_model.", ""):
        if prefix + "input_hint_block.0.weight" in f:
            return Detected(FAMILIES["controlnet"], {"controlnet": ("ldm", prefix)})
    if "controlnet_cond_embedding.conv_in.weight" in f:  # ControlNets (SDXL ones mostly) shipped in diffusers names
        return Detected(FAMILIES["controlnet"], {"controlnet": ("diffusers", "")})
    for prefix in ("", *VAE_PREFIXES):
        if prefix + "encoder.down.0.block.0.conv1.weight" in f:
            return Detected(FAMILIES["vae"], {"vae": ("ldm", prefix)})
    raise UnknownCheckpointError(_unknown_message(f))


def _unknown_message(f: SingleFile) -> str:
    keys = f.keys
    scores = []
    for family in FAMILIES.values():
        hits = sum(1 for marker in family.markers if any(k.startswith(marker) or f".{marker}" in k for k in keys))
        scores.append((hits / len(family.markers), family.title))
    scores.sort(key=lambda s: -s[0])
    closest = ", ".join(f"{title} ({score:.0%} of its key groups)" for score, title in scores[:3])
    known = tuple(m for fam in FAMILIES.values() for m in fam.markers)
    unmatched = [k for k in keys if not any(k.startswith(m) for m in known)][:5] or keys[:5]
    layout = ""
    if any(k.startswith(("down_blocks.", "transformer_blocks.", "encoder.down_blocks.")) for k in keys):
        layout = (" Its keys look like the diffusers layout: a diffusers model folder (config.json + "
                  "diffusion_pytorch_model.safetensors) loads with <Model>.from_pretrained(folder).")
    return (
        f"{f.path} ({len(keys)} tensors) matches no supported single-file family. Supported: "
        + ", ".join(fam.title for fam in FAMILIES.values())
        + f". Closest: {closest}. Unmatched keys include: {unmatched}.{layout}"
    )
