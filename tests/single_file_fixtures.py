"""Original-layout (LDM / BFL) single files written from diffusers-format folders, for the single-file tests.

The key mapping here is the *inverse* direction (diffusers names -> original names), written independently of
the library's converter: it enumerates the original layout block by block. The tests check it against the
reference implementation (diffusers' `from_single_file` must load these files to the folder's tensors), so a file
written here is a genuine original-layout file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

_RESNET_RENAMES = (("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("norm2.", "out_layers.0."),
                   ("conv2.", "out_layers.3."), ("time_emb_proj.", "emb_layers.1."), ("conv_shortcut.", "skip_connection."))


def _read(folder: Path, sub: str) -> tuple[dict[str, torch.Tensor], dict]:
    directory = folder / sub
    files = sorted(directory.glob("*.safetensors"))
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state, json.loads((directory / "config.json").read_text())


def _rename(state: dict[str, torch.Tensor], pairs: list[tuple[str, str, bool]], what: str) -> dict[str, torch.Tensor]:
    """Replace the longest matching diffusers prefix; resnet prefixes also rename their layers."""
    pairs = sorted(pairs, key=lambda p: -len(p[0]))
    out = {}
    for key, value in state.items():
        for old, new, resnet in pairs:
            if key.startswith(old):
                rest = key[len(old):]
                if resnet:
                    for a, b in _RESNET_RENAMES:
                        if rest.startswith(a):
                            rest = b + rest[len(a):]
                out[new + rest] = value
                break
        else:
            raise KeyError(f"{what}: no original name for {key}")
    return out


def _unet_pairs(config: dict, controlnet: bool = False) -> list[tuple[str, str, bool]]:
    layers = config["layers_per_block"]
    pairs = [("conv_in.", "input_blocks.0.0.", False), ("time_embedding.linear_1.", "time_embed.0.", False),
             ("time_embedding.linear_2.", "time_embed.2.", False), ("add_embedding.linear_1.", "label_emb.0.0.", False),
             ("add_embedding.linear_2.", "label_emb.0.2.", False), ("conv_norm_out.", "out.0.", False),
             ("conv_out.", "out.2.", False),
             ("mid_block.resnets.0.", "middle_block.0.", True), ("mid_block.attentions.0.", "middle_block.1.", False),
             ("mid_block.resnets.1.", "middle_block.2.", True)]
    n = len(config["down_block_types"])
    index = 1
    for block in range(n):
        for layer in range(layers):
            pairs.append((f"down_blocks.{block}.resnets.{layer}.", f"input_blocks.{index}.0.", True))
            pairs.append((f"down_blocks.{block}.attentions.{layer}.", f"input_blocks.{index}.1.", False))
            index += 1
        if block < n - 1:
            pairs.append((f"down_blocks.{block}.downsamplers.0.conv.", f"input_blocks.{index}.0.op.", False))
            index += 1
    if controlnet:
        channels = config["conditioning_embedding_out_channels"]
        n_cond = 2 * (len(channels) - 1)
        pairs.append(("controlnet_cond_embedding.conv_in.", "input_hint_block.0.", False))
        pairs += [(f"controlnet_cond_embedding.blocks.{i}.", f"input_hint_block.{2 * i + 2}.", False) for i in range(n_cond)]
        pairs.append(("controlnet_cond_embedding.conv_out.", f"input_hint_block.{2 * n_cond + 2}.", False))
        pairs += [(f"controlnet_down_blocks.{i}.", f"zero_convs.{i}.0.", False) for i in range(index)]
        pairs.append(("controlnet_mid_block.", "middle_block_out.0.", False))
        return pairs
    index = 0
    for block, kind in enumerate(config["up_block_types"]):
        for layer in range(layers + 1):
            pairs.append((f"up_blocks.{block}.resnets.{layer}.", f"output_blocks.{index}.0.", True))
            pairs.append((f"up_blocks.{block}.attentions.{layer}.", f"output_blocks.{index}.1.", False))
            index += 1
        if block < n - 1:
            slot = 2 if kind.startswith("CrossAttn") else 1
            pairs.append((f"up_blocks.{block}.upsamplers.0.conv.", f"output_blocks.{index - 1}.{slot}.conv.", False))
    return pairs


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict, prefix: str = "model.diffusion_model.") -> dict:
    return {prefix + k: v for k, v in _rename(state, _unet_pairs(config), "unet").items()}


def controlnet_to_ldm(state: dict[str, torch.Tensor], config: dict, prefix: str = "control_model.") -> dict:
    return {prefix + k: v for k, v in _rename(state, _unet_pairs(config, controlnet=True), "controlnet").items()}


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict, prefix: str = "first_stage_model.") -> dict:
    n = len(config["block_out_channels"])
    pairs = [(p, p, False) for p in ("encoder.conv_in.", "encoder.conv_out.", "decoder.conv_in.", "decoder.conv_out.",
                                     "quant_conv.", "post_quant_conv.")]
    pairs += [("encoder.conv_norm_out.", "encoder.norm_out.", False), ("decoder.conv_norm_out.", "decoder.norm_out.", False)]
    for side in ("encoder", "decoder"):
        pairs += [(f"{side}.mid_block.resnets.{i}.", f"{side}.mid.block_{i + 1}.", False) for i in range(2)]
        pairs.append((f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1.", False))
    for i in range(n):
        pairs += [(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.", False) for j in range(8)]
        pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.conv.", f"encoder.down.{i}.downsample.conv.", False))
        pairs += [(f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{n - 1 - i}.block.{j}.", False) for j in range(8)]
        pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.conv.", f"decoder.up.{n - 1 - i}.upsample.conv.", False))
    out = {}
    attn = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}
    for key, value in _rename(state, pairs, "vae").items():
        key = key.replace("conv_shortcut.", "nin_shortcut.")
        if ".mid.attn_1." in key:
            head, _, rest = key.partition(".mid.attn_1.")
            for a, b in attn.items():
                if rest.startswith(a):
                    rest = b + rest[len(a):]
                    break
            key = f"{head}.mid.attn_1.{rest}"
            if value.ndim == 2:  # the original stores these as 1x1 convolutions
                value = value[:, :, None, None]
        out[prefix + key] = value
    return out


def clip_to_ldm(state: dict[str, torch.Tensor], prefix: str) -> dict:
    return {prefix + (k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v
            for k, v in state.items()}


def openclip_to_ldm(state: dict[str, torch.Tensor], prefix: str) -> dict:
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    out = {prefix + "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
           prefix + "positional_embedding": state.pop("embeddings.position_embedding.weight"),
           prefix + "ln_final.weight": state.pop("final_layer_norm.weight"),
           prefix + "ln_final.bias": state.pop("final_layer_norm.bias")}
    if "text_projection.weight" in state:
        out[prefix + "text_projection"] = state.pop("text_projection.weight").T.contiguous()
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for param in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{param}"] = torch.cat(
                [state.pop(f"{src}self_attn.{p}_proj.{param}") for p in "qkv"], dim=0)
            for a, b in names.items():
                out[f"{dst}{b}.{param}"] = state.pop(f"{src}{a}.{param}")
    assert not state, f"openclip: unconverted keys {sorted(state)}"
    return out


def flux_to_bfl(state: dict[str, torch.Tensor], prefix: str = "") -> dict:
    s = dict(state)
    out: dict[str, torch.Tensor] = {}

    def move(old: str, new: str) -> None:
        for param in ("weight", "bias"):
            if f"{old}.{param}" in s:
                out[f"{prefix}{new}.{param}"] = s.pop(f"{old}.{param}")

    for old, new in (("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer"),
                     ("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer"),
                     ("time_text_embed.text_embedder.linear_1", "vector_in.in_layer"),
                     ("time_text_embed.text_embedder.linear_2", "vector_in.out_layer"),
                     ("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer"),
                     ("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer"),
                     ("context_embedder", "txt_in"), ("x_embedder", "img_in"), ("proj_out", "final_layer.linear")):
        move(old, new)
    for param in ("weight", "bias"):
        scale, shift = s.pop(f"norm_out.linear.{param}").chunk(2, dim=0)
        out[f"{prefix}final_layer.adaLN_modulation.1.{param}"] = torch.cat([shift, scale], dim=0)
    doubles = sorted({int(k.split(".")[1]) for k in s if k.startswith("transformer_blocks.")})
    for i in doubles:
        b, d = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for old, new in (("norm1.linear", "img_mod.lin"), ("norm1_context.linear", "txt_mod.lin"),
                         ("ff.net.0.proj", "img_mlp.0"), ("ff.net.2", "img_mlp.2"), ("ff_context.net.0.proj", "txt_mlp.0"),
                         ("ff_context.net.2", "txt_mlp.2"), ("attn.to_out.0", "img_attn.proj"),
                         ("attn.to_add_out", "txt_attn.proj")):
            move(b + old, d + new)
        for old, new in (("attn.norm_q", "img_attn.norm.query_norm"), ("attn.norm_k", "img_attn.norm.key_norm"),
                         ("attn.norm_added_q", "txt_attn.norm.query_norm"), ("attn.norm_added_k", "txt_attn.norm.key_norm")):
            out[f"{prefix}{d}{new}.scale"] = s.pop(f"{b}{old}.weight")
        for param in ("weight", "bias"):
            out[f"{prefix}{d}img_attn.qkv.{param}"] = torch.cat([s.pop(f"{b}attn.to_{p}.{param}") for p in "qkv"])
            out[f"{prefix}{d}txt_attn.qkv.{param}"] = torch.cat([s.pop(f"{b}attn.add_{p}_proj.{param}") for p in "qkv"])
    singles = sorted({int(k.split(".")[1]) for k in s if k.startswith("single_transformer_blocks.")})
    for i in singles:
        b, d = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        move(b + "norm.linear", d + "modulation.lin")
        move(b + "proj_out", d + "linear2")
        out[f"{prefix}{d}norm.query_norm.scale"] = s.pop(f"{b}attn.norm_q.weight")
        out[f"{prefix}{d}norm.key_norm.scale"] = s.pop(f"{b}attn.norm_k.weight")
        for param in ("weight", "bias"):
            parts = [s.pop(f"{b}attn.to_{p}.{param}") for p in "qkv"] + [s.pop(f"{b}proj_mlp.{param}")]
            out[f"{prefix}{d}linear1.{param}"] = torch.cat(parts)
    assert not s, f"flux: unconverted keys {sorted(s)}"
    return out


def write_sd_file(folder: Path, out: Path, kind: str = "sd15", with_text_encoders: bool = True,
                  with_vae: bool = True, extra: dict | None = None) -> Path:
    """An LDM checkpoint from a tiny diffusers SD / SDXL folder. `kind`: sd15, sd2, sdxl, sdxl_refiner."""
    unet, unet_cfg = _read(folder, "unet")
    tensors = unet_to_ldm(unet, unet_cfg)
    if with_vae:
        vae, vae_cfg = _read(folder, "vae")
        tensors.update(vae_to_ldm(vae, vae_cfg))
    if with_text_encoders:
        if kind == "sd15":
            tensors.update(clip_to_ldm(_read(folder, "text_encoder")[0], "cond_stage_model.transformer."))
        elif kind == "sd2":
            te = _read(folder, "text_encoder")[0]
            tensors.update(openclip_to_ldm(te, "cond_stage_model.model."))
            hidden = te["embeddings.position_embedding.weight"].shape[1]
            gen = torch.Generator().manual_seed(5)  # the original keeps a projection the SD 2 pipeline does not use
            tensors["cond_stage_model.model.text_projection"] = torch.randn(hidden, hidden, generator=gen)
        elif kind == "sdxl":
            tensors.update(clip_to_ldm(_read(folder, "text_encoder")[0], "conditioner.embedders.0.transformer."))
            tensors.update(openclip_to_ldm(_read(folder, "text_encoder_2")[0], "conditioner.embedders.1.model."))
        elif kind == "sdxl_refiner":
            tensors.update(openclip_to_ldm(_read(folder, "text_encoder_2")[0], "conditioner.embedders.0.model."))
    tensors.update(extra or {})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out))
    return out


def write_controlnet_file(folder: Path, out: Path, prefix: str = "control_model.") -> Path:
    state, config = _read(folder, "")
    save_file({k: v.contiguous() for k, v in controlnet_to_ldm(state, config, prefix).items()}, str(out))
    return out


def write_flux_file(folder: Path, out: Path, prefix: str = "") -> Path:
    state, _ = _read(folder, "transformer")
    save_file({k: v.contiguous() for k, v in flux_to_bfl(state, prefix).items()}, str(out))
    return out
