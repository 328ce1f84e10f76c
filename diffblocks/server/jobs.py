"""`GET /api/jobs[/{id}]`: the queue and the history as one list of jobs, the shape the current ComfyUI frontend
reads for its queue and history panels (pending, in_progress, completed, failed, cancelled)."""

from __future__ import annotations

from typing import Any

__all__ = ["JOB_STATUSES", "job_from_history", "job_from_queue", "list_jobs"]

JOB_STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")
_PREVIEWABLE = frozenset({"images", "video", "audio", "3d"})


def _created(extra_data: dict) -> int | None:
    return extra_data.get("create_time")


def _workflow_id(extra_data: dict) -> str | None:
    workflow = (extra_data.get("extra_pnginfo") or {}).get("workflow") or {}
    return workflow.get("id") if isinstance(workflow, dict) else None


def _prune(job: dict) -> dict:
    return {key: value for key, value in job.items() if value is not None}


def job_from_queue(item: tuple, status: str) -> dict:
    number, prompt_id, _, extra_data, _ = item
    return _prune({"id": prompt_id, "status": status, "priority": number, "create_time": _created(extra_data),
                   "outputs_count": 0, "workflow_id": _workflow_id(extra_data)})


def _outputs_summary(outputs: dict) -> tuple[int, dict | None]:
    """How many output items, and the first previewable one (an "output"-type file first)."""
    count, preview, fallback = 0, None, None
    for node_id, node_outputs in outputs.items():
        if not isinstance(node_outputs, dict):
            continue
        for media_type, items in node_outputs.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict):
                    continue
                count += 1
                if preview is None and media_type in _PREVIEWABLE:
                    found = {**item, "nodeId": node_id, "mediaType": item.get("mediaType", media_type)}
                    if item.get("type") == "output":
                        preview = found
                    elif fallback is None:
                        fallback = found
    return count, preview or fallback


def job_from_history(prompt_id: str, entry: dict, detail: bool = False) -> dict:
    number, _, prompt, extra_data, _ = entry["prompt"]
    status_info = entry.get("status") or {}
    started = ended = error = None
    interrupted = False
    for event, data in status_info.get("messages", []):
        if event == "execution_start":
            started = data.get("timestamp")
        elif event in ("execution_success", "execution_error", "execution_interrupted"):
            ended = data.get("timestamp")
            error = data if event == "execution_error" else error
            interrupted = interrupted or event == "execution_interrupted"
    if status_info.get("status_str") == "error":
        status = "cancelled" if interrupted else "failed"
    else:
        status = "completed"
    outputs = entry.get("outputs", {})
    count, preview = _outputs_summary(outputs)
    job = _prune({"id": prompt_id, "status": status, "priority": number, "create_time": _created(extra_data),
                  "execution_start_time": started, "execution_end_time": ended, "execution_error": error,
                  "outputs_count": count, "preview_output": preview, "workflow_id": _workflow_id(extra_data)})
    if detail:
        job.update(outputs=outputs, execution_status=status_info,
                   workflow={"prompt": prompt, "extra_data": extra_data})
    return job


def list_jobs(running: list, pending: list, history: dict, statuses: list[str] | None = None,
              workflow_id: str | None = None, sort_by: str = "created_at", sort_order: str = "desc",
              limit: int | None = None, offset: int = 0) -> tuple[list[dict], int]:
    """(jobs, total before paging), filtered by status and workflow, sorted by creation time or duration."""
    wanted = set(statuses or JOB_STATUSES)
    jobs: list[dict[str, Any]] = []
    if "in_progress" in wanted:
        jobs += [job_from_queue(item, "in_progress") for item in running]
    if "pending" in wanted:
        jobs += [job_from_queue(item, "pending") for item in pending]
    if wanted & {"completed", "failed", "cancelled"}:
        jobs += [job for pid, entry in history.items()
                 if (job := job_from_history(pid, entry))["status"] in wanted]
    if workflow_id:
        jobs = [job for job in jobs if job.get("workflow_id") == workflow_id]
    if sort_by == "execution_duration":
        def key(job: dict) -> float:
            start, end = job.get("execution_start_time"), job.get("execution_end_time")
            return end - start if start and end else 0
    else:
        def key(job: dict) -> float:
            return job.get("create_time") or 0
    jobs.sort(key=key, reverse=sort_order == "desc")
    total = len(jobs)
    jobs = jobs[max(offset, 0):]
    if limit is not None:
        jobs = jobs[:limit]
    return jobs, total
