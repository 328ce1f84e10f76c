"""Image files in and out: `GET /view`, `POST /upload/image`, `POST /upload/mask`.

Files live in three folders, named by the `type` parameter as in ComfyUI: `output` (what SaveImage writes),
`input` (uploads, what LoadImage reads) and `temp` (PreviewImage). A request names a file by `filename` and an
optional `subfolder`; both must stay inside their folder: absolute paths, `..` and anything that resolves
outside are refused (400 for the file name, 403 for a subfolder), as ComfyUI does.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path

from aiohttp import web

logger = logging.getLogger(__name__)

__all__ = ["FileRoutes", "inside"]


def inside(root: Path, *parts: str) -> Path | None:
    """`root/parts...` resolved, or None when it would leave `root` (absolute parts, `..`, symlinks out)."""
    root = root.resolve()
    if any(os.path.isabs(part) or part.startswith(("/", "\\")) for part in parts if part):
        return None
    path = root.joinpath(*[part for part in parts if part]).resolve()
    return path if path == root or root in path.parents else None


def _annotated(name: str) -> tuple[str, str | None]:
    """ComfyUI's `name.png [output]` spelling: the file name and the folder type it names, if any."""
    for kind in ("output", "input", "temp"):
        suffix = f" [{kind}]"
        if name.endswith(suffix):
            return name[: -len(suffix)], kind
    return name, None


class FileRoutes:
    """Handlers over the input/output/temp folders."""

    def __init__(self, folders: dict[str, Path]) -> None:
        self.folders = folders  # {"input": ..., "output": ..., "temp": ...}

    def _folder(self, kind: str | None, default: str) -> Path | None:
        return self.folders.get(kind or default)

    def _file(self, filename: str, kind: str | None, subfolder: str, what: str) -> Path | web.Response:
        """The existing file a (filename, type, subfolder) reference names, inside its folder; else the error
        response (`what` prefixes the messages: which field of the request was wrong)."""
        name, annotated = _annotated(filename)
        if not name or os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in name:
            return web.Response(status=400, text=f"{what}filename must be a plain name inside the folder")
        folder = self._folder(annotated or kind, "output")
        if folder is None:
            return web.Response(status=400, text=f"{what}type must be one of output, input, temp")
        directory = inside(folder, subfolder)
        if directory is None:
            return web.Response(status=403, text=f"{what}subfolder leaves the folder")
        path = inside(directory, os.path.basename(name))
        if path is None or not path.is_file():
            return web.Response(status=404, text=f"{what}file does not exist")
        return path

    # -- GET /view ----------------------------------------------------------------------------------------
    async def view(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        if "filename" not in query:
            return web.Response(status=404)
        path = self._file(query["filename"], query.get("type"), query.get("subfolder", ""), "")
        if isinstance(path, web.Response):
            return path
        headers = {"Content-Disposition": f'filename="{path.name}"'}
        channel = query.get("channel", "rgba")
        if "preview" in query:
            return self._preview(path, query["preview"], channel)
        if channel in ("rgb", "a"):
            return self._channel(path, channel, headers)
        return web.FileResponse(path, headers=headers)

    @staticmethod
    def _preview(path: Path, spec: str, channel: str) -> web.Response:
        from PIL import Image

        parts = spec.split(";")
        fmt = parts[0] if parts[0] in ("webp", "jpeg") and "a" not in channel else "webp"
        quality = int(parts[-1]) if parts[-1].isdigit() else 90
        with Image.open(path) as image:
            if fmt == "jpeg" or channel == "rgb":
                image = image.convert("RGB")
            buffer = io.BytesIO()
            image.save(buffer, format=fmt, quality=quality)
        name = path.name.replace("png", fmt)
        return web.Response(body=buffer.getvalue(), content_type=f"image/{fmt}",
                            headers={"Content-Disposition": f'filename="{name}"'})

    @staticmethod
    def _channel(path: Path, channel: str, headers: dict) -> web.Response:
        from PIL import Image

        with Image.open(path) as image:
            if channel == "rgb":
                out = image.convert("RGB")
            else:
                alpha = image.getchannel("A") if image.mode == "RGBA" else Image.new("L", image.size, 255)
                out = Image.new("RGBA", image.size)
                out.putalpha(alpha)
            buffer = io.BytesIO()
            out.save(buffer, format="PNG")
        return web.Response(body=buffer.getvalue(), content_type="image/png", headers=headers)

    # -- POST /upload/image, /upload/mask ----------------------------------------------------------------
    async def upload_image(self, request: web.Request) -> web.Response:
        post = await request.post()
        return self._store(post, None)

    async def upload_mask(self, request: web.Request) -> web.Response:
        """A mask painted in the frontend: the original image with the mask's alpha channel."""
        post = await request.post()
        try:
            ref = json.loads(post.get("original_ref") or "")
        except ValueError:
            return web.Response(status=400, text="original_ref must be JSON naming the original image")
        if not isinstance(ref, dict) or not ref.get("filename"):
            return web.Response(status=400, text="original_ref must name the original image's filename")
        original = self._file(str(ref["filename"]), ref.get("type"), ref.get("subfolder", ""), "original_ref ")
        if isinstance(original, web.Response):
            return original
        return self._store(post, original)

    def _store(self, post, original: Path | None) -> web.Response:
        from PIL import Image
        from PIL.PngImagePlugin import PngInfo

        image = post.get("image")
        if image is None or not hasattr(image, "file") or not image.filename:
            return web.Response(status=400, text="expected a multipart field 'image' with a file name")
        kind = post.get("type") or "input"
        folder = self.folders.get(kind)
        if folder is None:
            return web.Response(status=400, text="type must be one of input, output, temp")
        subfolder = post.get("subfolder", "") or ""
        directory = inside(folder, subfolder)
        filename = os.path.basename(image.filename)
        target = inside(directory, filename) if directory is not None else None
        if target is None or not filename or filename in (".", ".."):
            return web.Response(status=400, text="the upload's subfolder and file name must stay inside the folder")
        directory.mkdir(parents=True, exist_ok=True)
        data = image.file.read()
        if post.get("overwrite") not in ("true", "1"):
            stem, suffix = os.path.splitext(filename)
            index = 1
            while target.exists():
                if hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest():
                    return web.json_response({"name": target.name, "subfolder": subfolder, "type": kind})
                target = directory / f"{stem} ({index}){suffix}"
                index += 1
        if original is None:
            target.write_bytes(data)
        else:
            with Image.open(original) as source:
                info = PngInfo()
                for key, value in getattr(source, "text", {}).items():
                    info.add_text(key, value)
                merged = source.convert("RGBA")
            with Image.open(io.BytesIO(data)) as mask:
                merged.putalpha(mask.convert("RGBA").getchannel("A"))
            merged.save(target, format="PNG", compress_level=4, pnginfo=info)
        return web.json_response({"name": target.name, "subfolder": subfolder, "type": kind})
