"""The OpenAI fine-tuning API through the official `openai` SDK: upload, create, poll, chat."""

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from finetune.federated.config import load_federated_config
from finetune.federated.job import LOCAL, job_recipe
from finetune.hyperparameters import api_recipe, resolve_hyperparameters
from finetune.jobs import JobStatus
from finetune.kinds import DISTILL, FEDERATED, TUNE_TRIAL
from finetune.methods import load_job_recipe
from finetune.protocol import JobRequest
from tests.finetune.conftest import wait_for_job
from tests.serving.conftest import RunningGateway, running_gateway

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ROW = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, base_model_dir: Path
) -> Iterator[RunningGateway]:
    home = tmp_path_factory.mktemp("ft-gateway-home")
    with running_gateway(home, base_model_dir, resolve_ttl_s=0.0) as running:
        yield running


@pytest.fixture(scope="module")
def client(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0)


def test_upload_train_poll_and_chat_with_the_fine_tuned_model(
    client: openai.OpenAI, skills_dir: Path
) -> None:
    with (skills_dir / "reverse" / "train.jsonl").open("rb") as data:
        training = client.files.create(file=data, purpose="fine-tune")
    assert training.id.startswith("file-") and training.purpose == "fine-tune"
    assert client.files.retrieve(training.id).bytes == training.bytes

    job = client.fine_tuning.jobs.create(
        model="demo",
        training_file=training.id,
        hyperparameters={"n_epochs": 1, "batch_size": 16, "learning_rate_multiplier": 2},
        suffix="reverse",
        seed=7,
    )
    assert job.status in ("queued", "running") and job.model == "demo"
    assert job.hyperparameters.n_epochs == 1 and job.seed == 7

    job = wait_for_job(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:demo:reverse:{job.id}"
    assert job.trained_tokens > 0 and job.finished_at >= job.created_at

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert events[0].message == "The job has successfully completed"
    assert events[-1].message == f"Created fine-tuning job: {job.id}"
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and checkpoints[0].fine_tuned_model_checkpoint.startswith(
        f"{job.fine_tuned_model}:ckpt-step-"
    )

    assert job.fine_tuned_model in {m.id for m in client.models.list().data}
    reply = client.chat.completions.create(
        model=job.fine_tuned_model,
        messages=[{"role": "user", "content": "reverse: abc"}],
        max_tokens=4,
        temperature=0,
    )
    assert reply.model == job.fine_tuned_model and reply.usage.completion_tokens > 0

    listed = client.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in listed.data] == [job.id]

    with pytest.raises(openai.BadRequestError, match="already succeeded"):
        client.fine_tuning.jobs.cancel(job.id)
    assert client.files.delete(training.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(training.id)


def test_a_bad_file_is_refused_with_its_line_numbers(client: openai.OpenAI) -> None:
    good = (
        b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'
    )
    bad = good + b'\n{oops\n{"messages": []}\n'
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("train.jsonl", io.BytesIO(bad)), purpose="fine-tune")
    error = caught.value.body
    assert error["param"] == "file" and error["code"] == "invalid_file"
    assert "train.jsonl:2: not JSON" in error["message"]
    assert "train.jsonl:3: `messages` is missing or empty" in error["message"]

    with pytest.raises(openai.BadRequestError, match="purpose: Input should be 'fine-tune'"):
        client.files.create(file=("x.jsonl", io.BytesIO(b"{}")), purpose="assistants")


def test_bad_job_requests_get_openai_errors(client: openai.OpenAI, skills_dir: Path) -> None:
    with (skills_dir / "upper" / "train.jsonl").open("rb") as data:
        training = client.files.create(file=data, purpose="fine-tune")
    with pytest.raises(openai.NotFoundError) as caught:
        client.fine_tuning.jobs.create(model="nope", training_file=training.id)
    assert caught.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError) as caught:
        client.fine_tuning.jobs.create(model="demo", training_file="file-missing")
    assert caught.value.body["param"] == "training_file"
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(
            model="demo", training_file=training.id, hyperparameters={"n_epochs": 0}
        )
    assert caught.value.body["param"] == "hyperparameters.n_epochs"
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-missing")


def test_keys_see_only_their_own_files_and_jobs(
    tmp_path: Path, base_model_dir: Path, skills_dir: Path
) -> None:
    with running_gateway(tmp_path / "home", base_model_dir) as running:
        keys = running.gateway.keys
        secrets = {
            name: keys.create(name, models=models, admin=admin)[1]
            for name, models, admin in [
                ("alice", ("demo",), False),
                ("bob", ("*",), False),
                ("ops", ("*",), True),
            ]
        }
        alice, bob, ops = (
            openai.OpenAI(base_url=f"{running.base_url}/v1", api_key=secrets[n], max_retries=0)
            for n in ("alice", "bob", "ops")
        )
        with (skills_dir / "upper" / "train.jsonl").open("rb") as data:
            training = alice.files.create(file=data, purpose="fine-tune")
        job = alice.fine_tuning.jobs.create(model="demo", training_file=training.id)
        alice.fine_tuning.jobs.cancel(job.id)

        with pytest.raises(openai.NotFoundError):
            bob.files.retrieve(training.id)
        with pytest.raises(openai.NotFoundError):
            bob.fine_tuning.jobs.retrieve(job.id)
        with pytest.raises(openai.NotFoundError):
            bob.fine_tuning.jobs.create(model="demo", training_file=training.id)
        assert bob.fine_tuning.jobs.list().data == []
        assert [j.id for j in ops.fine_tuning.jobs.list().data] == [job.id]
        assert ops.files.retrieve(training.id).id == training.id

        with pytest.raises(openai.PermissionDeniedError):
            alice.fine_tuning.jobs.create(model="other", training_file=training.id)
        # A key allowed a base may use the models fine-tuned from it.
        assert keys.authenticate(secrets["alice"]).allows(f"ft:demo::{job.id}")
        assert not keys.authenticate(secrets["alice"]).allows(f"ft:other::{job.id}")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(
                base_url=f"{running.base_url}/v1", api_key="sk-wrong", max_retries=0
            ).files.list()


def test_each_key_has_quotas_on_files_and_jobs(
    tmp_path: Path, base_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMOPS_FINETUNE_MAX_FILES_PER_KEY", "2")
    monkeypatch.setenv("LLMOPS_FINETUNE_MAX_FILE_BYTES_PER_KEY", "2000")
    monkeypatch.setenv("LLMOPS_FINETUNE_MAX_ACTIVE_JOBS_PER_KEY", "1")
    row = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant",'
    row += b' "content": "yo"}]}\n'
    with running_gateway(tmp_path / "home", base_model_dir) as running:
        _, secret = running.gateway.keys.create("small")
        _, other = running.gateway.keys.create("other")
        client, neighbour = (
            openai.OpenAI(base_url=f"{running.base_url}/v1", api_key=s, max_retries=0)
            for s in (secret, other)
        )

        def upload(c: openai.OpenAI, data: bytes):
            return c.files.create(file=("t.jsonl", io.BytesIO(data)), purpose="fine-tune")

        first, second = upload(client, row), upload(client, row)
        with pytest.raises(openai.RateLimitError) as err:
            upload(client, row)
        assert err.value.body["code"] == "quota_exceeded"
        assert upload(neighbour, row).id  # quotas are per key
        client.files.delete(first.id)
        with pytest.raises(openai.APIStatusError) as err:
            upload(client, row * 30)  # over the bytes this key has left
        assert err.value.status_code == 413

        job = client.fine_tuning.jobs.create(model="demo", training_file=second.id)
        with pytest.raises(openai.RateLimitError, match="queued or running jobs"):
            client.fine_tuning.jobs.create(model="demo", training_file=second.id)
        client.fine_tuning.jobs.cancel(job.id)
        again = client.fine_tuning.jobs.create(model="demo", training_file=second.id)
        client.fine_tuning.jobs.cancel(again.id)


def test_jobs_of_every_kind_list_and_read(
    gateway: RunningGateway, client: openai.OpenAI, base_model_dir: Path
) -> None:
    """Jobs made without the API (a recipe from the CLI, distillation, pruning, the
    continuous-training loop, a search trial, a federated run, and any hyperparameters a kind
    may store) list and read like the API's, with what their recipes say."""
    runner = gateway.gateway.fine_tuning.runner
    made = {}
    for name in ("demo-reverse-lora", "demo-distill", "demo-prune"):
        kind, recipe = load_job_recipe(CONFIGS / "finetune" / f"{name}.yaml")
        made[name] = runner.create(recipe, kind=kind)
    # The loop's job: the API's `auto` rule in a recipe, no hyperparameters stored.
    request = JobRequest(model="demo", training_file="train.jsonl")
    hyper = resolve_hyperparameters(request, 300)
    data = [(Path("train.jsonl"), "train")]
    loop_recipe = api_recipe(request, "demo:1", base_model_dir, data, hyper)
    made["loop"] = runner.create(loop_recipe, "demo")
    made["trial"] = runner.store.create(
        kind=TUNE_TRIAL, model="demo", recipe={"study": "s"}, created_by="tests"
    )
    config = load_federated_config(CONFIGS / "federated" / "demo-three-silos.yaml")
    made["federated"] = runner.store.create(
        kind=FEDERATED,
        model=config.base_model,
        recipe=job_recipe(config, LOCAL),
        created_by="tests",
        suffix="federated",
    )
    made["odd"] = runner.store.create(
        kind=DISTILL,
        model="demo",
        recipe={},
        created_by="tests",
        hyperparameters={"n_epochs": "auto", "batch_size": 2.5, "temperature": 2.0},
    )
    for job in made.values():
        runner.store.transition(job.id, (JobStatus.QUEUED,), JobStatus.CANCELLED)
    runner.store.add_checkpoint(made["trial"].id, 5, "jobs/trial/checkpoint-5", {"loss": 1.5})

    listed = {j.id: j for j in client.fine_tuning.jobs.list(limit=100).data}
    assert set(listed) >= {j.id for j in made.values()}
    expected = {  # (n_epochs, batch_size, learning_rate_multiplier)
        "demo-reverse-lora": (1, 32, None),
        "demo-distill": (None, 64, None),  # max_steps, not epochs
        "demo-prune": (None, 64, None),
        "loop": (hyper.n_epochs, hyper.batch_size, None),
        "trial": (None, None, None),
        "federated": (None, None, None),
        "odd": (None, None, None),
    }
    for name, job in made.items():
        for shown in (listed[job.id], client.fine_tuning.jobs.retrieve(job.id)):
            h = shown.hyperparameters
            assert (h.n_epochs, h.batch_size, h.learning_rate_multiplier) == expected[name], name
            assert shown.method.supervised.hyperparameters.model_dump() == h.model_dump()
            assert shown.status == "cancelled"
    [checkpoint] = client.fine_tuning.jobs.checkpoints.list(made["trial"].id).data
    assert checkpoint.fine_tuned_model_checkpoint == f"ft:demo::{made['trial'].id}:ckpt-step-5"
    assert client.fine_tuning.jobs.checkpoints.list(made["federated"].id).data == []


def test_unknown_and_unsupported_job_fields_are_refused(
    gateway: RunningGateway, client: openai.OpenAI
) -> None:
    training = client.files.create(file=("t.jsonl", io.BytesIO(ROW)), purpose="fine-tune")

    def refused(**fields) -> dict:
        with pytest.raises(openai.BadRequestError) as caught:
            client.fine_tuning.jobs.create(model="demo", training_file=training.id, **fields)
        return caught.value.body

    error = refused(extra_body={"n_epoch": 3})
    assert error["param"] == "n_epoch" and "Extra inputs are not permitted" in error["message"]
    method = {"type": "supervised", "supervised": {"hyperparameters": {}, "beta": 1}}
    assert refused(method=method)["param"] == "method.supervised.beta"
    error = refused(integrations=[{"type": "wandb", "wandb": {"project": "p"}}])
    assert error["param"] == "integrations" and "not supported" in error["message"]
    assert error["code"] == "unsupported_integration"
    error = refused(metadata={f"k{i}": "v" for i in range(17)})
    assert error["param"] == "metadata" and "at most 16" in error["message"]
    assert refused(metadata={"k" * 65: "v"})["param"].startswith("metadata")
    assert refused(metadata={"k": "v" * 513})["param"] == "metadata.k"

    schema = httpx.get(f"{gateway.base_url}/openapi.json").json()["components"]["schemas"]
    assert schema["JobRequest"]["additionalProperties"] is False
    metadata = schema["JobRequest"]["properties"]["metadata"]["anyOf"][0]
    assert metadata["maxProperties"] == 16 and metadata["propertyNames"]["maxLength"] == 64
    assert metadata["additionalProperties"]["maxLength"] == 512


def test_a_jobs_metadata_is_kept_and_returned(client: openai.OpenAI) -> None:
    training = client.files.create(file=("t.jsonl", io.BytesIO(ROW)), purpose="fine-tune")
    labels = {"team": "search", "k" * 64: "v" * 512}
    job = client.fine_tuning.jobs.create(
        model="demo", training_file=training.id, metadata=labels, integrations=[]
    )
    client.fine_tuning.jobs.cancel(job.id)
    assert job.metadata == labels
    assert client.fine_tuning.jobs.retrieve(job.id).metadata == labels
    listed = {j.id: j for j in client.fine_tuning.jobs.list(limit=100).data}
    assert listed[job.id].metadata == labels
    plain = client.fine_tuning.jobs.create(model="demo", training_file=training.id)
    client.fine_tuning.jobs.cancel(plain.id)
    assert client.fine_tuning.jobs.retrieve(plain.id).metadata is None
