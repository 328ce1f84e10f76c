"""The ComfyUI HTTP routes over the engine and the queue (server.py of ComfyUI is the reference for every
route's parameters and answers). Files, user data and the frontend's own files live in their own modules.

Features this server does not have answer with honest empty results: `/embeddings` (no textual-inversion
embeddings in prompt text), `/i18n` and `/workflow_templates` (no custom-node translations or templates),
`/global_subgraphs` (no shared subgraph blueprints), `/node_replacements` (no node replacements).
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import sys
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web

from .bodies import bad_request, json_object
from .jobs import JOB_STATUSES, job_from_history, job_from_queue, list_jobs
from .queue import PromptQueue
from .worker import PromptWorker

logger = logging.getLogger(__name__)

__all__ = ["ApiRoutes", "SENSITIVE_EXTRA_DATA_KEYS"]

# credentials the frontend may put in extra_data for ComfyUI's paid API nodes; never stored or echoed
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")


def _id_list(body: dict, key: str) -> list:
    ids = body.get(key) or []
    if not isinstance(ids, list):
        raise bad_request("invalid_json", f"{key!r} must be a list of ids, got {type(ids).__name__}")
    return ids


def _int_query(request: web.Request, name: str, default: int | None) -> int | None:
    value = request.rel_url.query.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"query parameter {name!r} must be an integer, got {value!r}") from exc


# ComfyUI's model folder names, and the loader input that lists that folder's models
MODEL_FOLDER_INPUTS = {
    "checkpoints": ("CheckpointLoaderSimple", "ckpt_name"),
    "loras": ("LoraLoader", "lora_name"),
    "vae": ("VAELoader", "vae_name"),
    "controlnet": ("ControlNetLoader", "control_net_name"),
    "diffusion_models": ("UNETLoader", "unet_name"),
    "text_encoders": ("DualCLIPLoader", "clip_name1"),
}


def _combo_options(spec: Any) -> list[str] | None:
    """The choices of a COMBO input spec, old (`[[a, b], {...}]`) or new (`["COMBO", {"options": [...]}]`)."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return None
    if isinstance(spec[0], list):
        return [str(x) for x in spec[0]]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        return [str(x) for x in spec[1].get("options", [])]
    return None


def _memory() -> tuple[int, int]:
    """(total, available) RAM in bytes, from /proc/meminfo where there is one."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        return int(fields["MemTotal"].split()[0]) * 1024, int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
        return total, 0


class ApiRoutes:
    def __init__(self, engine: Any, queue: PromptQueue, worker: PromptWorker, *, web_root: Path | None,
                 features: dict, models_dir: Path) -> None:
        self.engine = engine
        self.queue = queue
        self.worker = worker
        self.web_root = web_root
        self.features = features
        self.models_dir = models_dir
        self._number = 0

    async def _off_loop(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, partial(fn, *args))

    def queue_info(self) -> dict:
        return {"exec_info": {"queue_remaining": self.queue.tasks_remaining()}}

    # -- nodes --------------------------------------------------------------------------------------------
    async def object_info(self, request: web.Request) -> web.Response:
        return web.json_response(await self._off_loop(self.engine.registry.object_info))

    async def object_info_node(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        info = await self._off_loop(self.engine.registry.object_info)
        return web.json_response({name: info[name]} if name in info else {})

    # -- prompts ------------------------------------------------------------------------------------------
    async def post_prompt(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        if "prompt" not in body:
            error = {"type": "no_prompt", "message": "No prompt provided",
                     "details": "the body must be a JSON object with a 'prompt' (an API-format workflow)",
                     "extra_info": {}}
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        prompt = body["prompt"]
        if "number" in body:
            try:
                number = float(body["number"])
            except (TypeError, ValueError) as exc:
                raise bad_request("invalid_prompt", f"'number' must be a number, got {body['number']!r}") from exc
        else:
            number = -self._number if body.get("front") else self._number
            self._number += 1
        if not isinstance(prompt, dict):
            error = {"type": "invalid_prompt", "message": "Invalid prompt",
                     "details": f"'prompt' must be an object of nodes by id, got {type(prompt).__name__}",
                     "extra_info": {}}
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        result = await self._off_loop(self.engine.validate, prompt)
        if not result.ok:
            logger.warning("invalid prompt: %s", (result.error or {}).get("message"))
            return web.json_response({"error": result.error, "node_errors": result.node_errors}, status=400)
        outputs = list(result.outputs)
        targets = body.get("partial_execution_targets")
        if targets:  # the frontend's "queue selected output nodes": only those outputs run
            wanted = {str(t) for t in targets}
            outputs = [o for o in outputs if str(o) in wanted]
            if not outputs:
                error = {"type": "prompt_no_outputs", "message": "Prompt has no outputs",
                         "details": f"none of partial_execution_targets {sorted(wanted)} is an output node",
                         "extra_info": {}}
                return web.json_response({"error": error, "node_errors": {}}, status=400)
        extra_data = body.get("extra_data") or {}
        if not isinstance(extra_data, dict):
            raise bad_request("invalid_prompt", f"'extra_data' must be an object, got {type(extra_data).__name__}")
        extra_data = dict(extra_data)
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        for key in SENSITIVE_EXTRA_DATA_KEYS:
            extra_data.pop(key, None)
        extra_data["create_time"] = int(time.time() * 1000)
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        self.queue.put((number, prompt_id, prompt, extra_data, outputs))
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": result.node_errors})

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self.queue_info())

    async def get_queue(self, request: web.Request) -> web.Response:
        running, pending = self.queue.current()
        return web.json_response({"queue_running": running, "queue_pending": pending})

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        if body.get("clear"):
            self.queue.wipe_queue()
        for prompt_id in _id_list(body, "delete"):
            self.queue.delete_pending(str(prompt_id))
        return web.Response(status=200)

    async def post_interrupt(self, request: web.Request) -> web.Response:
        prompt_id = (await json_object(request)).get("prompt_id")
        self.worker.interrupt(prompt_id)
        return web.Response(status=200)

    async def post_free(self, request: web.Request) -> web.Response:
        """ComfyUI's `/free` ("Unload models" / "Free model and node cache" in the frontend): `unload_models`
        drops the loaded checkpoints, `free_memory` also the node output cache; done by the worker between
        prompts (a running prompt finishes first)."""
        body = await json_object(request)
        unload, free = bool(body.get("unload_models", False)), bool(body.get("free_memory", False))
        if unload or free:
            self.worker.request_free(unload_models=unload, free_memory=free)
        return web.Response(status=200)

    # -- history and jobs ---------------------------------------------------------------------------------
    async def get_history(self, request: web.Request) -> web.Response:
        max_items = _int_query(request, "max_items", None)
        offset = _int_query(request, "offset", -1)
        return web.json_response(self.queue.history(max_items=max_items, offset=offset))

    async def get_history_item(self, request: web.Request) -> web.Response:
        return web.json_response(self.queue.history(prompt_id=request.match_info["prompt_id"]))

    async def post_history(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        if body.get("clear"):
            self.queue.wipe_history()
        for prompt_id in _id_list(body, "delete"):
            self.queue.delete_history(str(prompt_id))
        return web.Response(status=200)

    async def get_jobs(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        statuses = [s for s in query.get("status", "").split(",") if s] or None
        unknown = [s for s in statuses or [] if s not in JOB_STATUSES]
        if unknown:
            return web.json_response({"error": f"unknown status {unknown}; expected some of {list(JOB_STATUSES)}"},
                                     status=400)
        limit = _int_query(request, "limit", None)
        offset = _int_query(request, "offset", 0) or 0
        running, pending = self.queue.current()
        jobs, total = list_jobs(running, pending, self.queue.history(), statuses, query.get("workflow_id"),
                                query.get("sort_by", "created_at"), query.get("sort_order", "desc"), limit, offset)
        return web.json_response({"jobs": jobs, "pagination": {
            "offset": offset, "limit": limit if limit is not None else total, "total": total,
            "has_more": offset + len(jobs) < total}})

    async def get_job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        entry = self.queue.history(prompt_id=job_id)
        if entry:
            return web.json_response(job_from_history(job_id, entry[job_id], detail=True))
        running, pending = self.queue.current()
        for items, status in ((running, "in_progress"), (pending, "pending")):
            for item in items:
                if item[1] == job_id:
                    return web.json_response(job_from_queue(item, status))
        return web.json_response({"error": f"no job {job_id!r}"}, status=404)

    def _cancel(self, job_id: str) -> None:
        if not self.queue.delete_pending(job_id):
            self.worker.interrupt(job_id)

    async def cancel_job(self, request: web.Request) -> web.Response:
        self._cancel(request.match_info["job_id"])
        return web.Response(status=200)

    async def cancel_jobs(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        for job_id in _id_list(body, "job_ids"):
            self._cancel(str(job_id))
        return web.Response(status=200)

    # -- the server and its folders ------------------------------------------------------------------------
    async def system_stats(self, request: web.Request) -> web.Response:
        import torch

        from .. import __version__

        ram_total, ram_free = _memory()
        if torch.cuda.is_available():
            index = torch.cuda.current_device()
            free, total = torch.cuda.mem_get_info(index)
            device = {"name": torch.cuda.get_device_name(index), "type": "cuda", "index": index,
                      "vram_total": total, "vram_free": free, "torch_vram_total": torch.cuda.memory_reserved(index),
                      "torch_vram_free": torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)}
        else:
            device = {"name": "cpu", "type": "cpu", "index": None, "vram_total": ram_total, "vram_free": ram_free,
                      "torch_vram_total": ram_total, "torch_vram_free": ram_free}
        from .frontend import frontend_version

        # argv carries ComfyUI's --disable-api-nodes: this server never has ComfyUI's paid API nodes, and the
        # frontend reads that flag to stay off the internet (it would otherwise check ComfyUI's releases
        # against our version string and offer ComfyUI updates)
        return web.json_response({
            "system": {"os": os.name, "ram_total": ram_total, "ram_free": ram_free,
                       "comfyui_version": f"diffblocks-{__version__}", "diffblocks_version": __version__,
                       "required_frontend_version": frontend_version() or "",
                       "python_version": sys.version, "pytorch_version": torch.__version__,
                       "embedded_python": False, "argv": [*sys.argv, "--disable-api-nodes"],
                       "platform": platform.platform()},
            "devices": [device]})

    async def extensions(self, request: web.Request) -> web.Response:
        """The frontend's own extension scripts (it ships some under extensions/); no custom-node web dirs."""
        if self.web_root is None:
            return web.json_response([])
        root = self.web_root
        files = sorted((root / "extensions").rglob("*.js")) if (root / "extensions").is_dir() else []
        return web.json_response(["/" + f.relative_to(root).as_posix() for f in files])

    async def get_features(self, request: web.Request) -> web.Response:
        return web.json_response(self.features)

    async def empty_list(self, request: web.Request) -> web.Response:
        return web.json_response([])

    async def empty_object(self, request: web.Request) -> web.Response:
        return web.json_response({})

    def _model_folders(self) -> dict[str, list[str]]:
        """Model names under --models by ComfyUI folder name, read from the loader nodes' name lists."""
        info = self.engine.registry.object_info()
        folders = {}
        for folder, (node, field) in MODEL_FOLDER_INPUTS.items():
            spec = (info.get(node, {}).get("input", {}).get("required", {}) or {}).get(field)
            names = _combo_options(spec)
            if names is not None:
                folders[folder] = names
        return folders

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(sorted(await self._off_loop(self._model_folders)))

    async def models_in(self, request: web.Request) -> web.Response:
        folders = await self._off_loop(self._model_folders)
        folder = request.match_info["folder"]
        if folder not in folders:
            return web.Response(status=404)
        return web.json_response(folders[folder])

    async def experiment_models(self, request: web.Request) -> web.Response:
        folders = await self._off_loop(self._model_folders)
        return web.json_response([{"name": name, "folders": [str(self.models_dir)]} for name in sorted(folders)])

    async def experiment_models_in(self, request: web.Request) -> web.Response:
        folders = await self._off_loop(self._model_folders)
        folder = request.match_info["folder"]
        if folder not in folders:
            return web.Response(status=404)
        return web.json_response([{"name": name, "pathIndex": 0} for name in folders[folder]])

    async def folder_paths(self, request: web.Request) -> web.Response:
        """`/internal/folder_paths`: where each kind of model is looked for (ComfyUI's layout under --models:
        `<models>/<folder>`, and checkpoints also at the top of `<models>`)."""
        root = self.models_dir.resolve()
        folders = await self._off_loop(self._model_folders)
        out = {folder: [str(root / folder)] + ([str(root)] if folder == "checkpoints" else []) for folder in folders}
        return web.json_response(out)

    def add_routes(self, routes: web.RouteTableDef) -> None:
        get, post = routes.get, routes.post
        get("/object_info")(self.object_info)
        get("/object_info/{node_class}")(self.object_info_node)
        post("/prompt")(self.post_prompt)
        get("/prompt")(self.get_prompt)
        get("/queue")(self.get_queue)
        post("/queue")(self.post_queue)
        post("/interrupt")(self.post_interrupt)
        post("/free")(self.post_free)
        get("/history")(self.get_history)
        get("/history/{prompt_id}")(self.get_history_item)
        post("/history")(self.post_history)
        get("/jobs")(self.get_jobs)
        post("/jobs/cancel")(self.cancel_jobs)
        get("/jobs/{job_id}")(self.get_job)
        post("/jobs/{job_id}/cancel")(self.cancel_job)
        get("/system_stats")(self.system_stats)
        get("/extensions")(self.extensions)
        get("/features")(self.get_features)
        get("/embeddings")(self.empty_list)
        get("/i18n")(self.empty_object)
        get("/workflow_templates")(self.empty_object)
        get("/global_subgraphs")(self.empty_object)
        get("/node_replacements")(self.empty_object)
        get("/models")(self.models)
        get("/models/{folder}")(self.models_in)
        get("/experiment/models")(self.experiment_models)
        get("/experiment/models/{folder}")(self.experiment_models_in)
