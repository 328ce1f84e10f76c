"""--push_to_hub uploads the output folder (without checkpoints, logs, validation images) via huggingface_hub."""

from __future__ import annotations

from training_fixtures import base_model, captioned_folder, fast_config

from diffblocks.training import train


def test_push_to_hub_uploads_the_model_folder(tmp_path_factory, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:  # the Hub is not reachable from the test machines: record what would be sent
        def __init__(self, token=None):
            self.token = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create", repo_id))

        def upload_folder(self, **kwargs):
            calls.append(("upload", kwargs))
            return "https://hub/commit"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = tmp_path / "pushed"
    train(fast_config(base_model(tmp_path_factory), captioned_folder(tmp_path / "d", n=2), out, max_train_steps=1,
                      checkpointing_steps=1, push_to_hub=True, hub_model_id="me/my-model", hub_token="tok"))
    assert calls[0] == ("create", "me/my-model")
    upload = calls[1][1]
    assert upload["folder_path"] == str(out) and upload["repo_id"] == "me/my-model"
    assert {"checkpoint-*", "logs/*", "validation/*"} <= set(upload["ignore_patterns"])
    assert (out / "checkpoint-1").is_dir()  # exists locally, excluded from the upload


