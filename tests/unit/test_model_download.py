"""A url model end to end in the operator's pure core: spec -> init container -> Degraded.

Parsing (``spec.model.url`` with its digests, refused mixes), the pod the builder makes
(the ``fetch-model`` init container, credentials only by reference, the model volume
read-only to the server, emptyDir or the node cache), the fetcher reading what the
builder wrote (its own settings model as the judge), and a failed fetch as the pod
status reports it becoming the voice's ``Degraded`` reason.
"""

from __future__ import annotations

from typing import Any

import pytest

from voicefleet_api import env as names
from voicefleet_api.termination import format_message
from voicefleet_inference.fetch import FetchSettings, S3Target
from voicefleet_operator.builders import FETCH_CONTAINER_NAME, BuildOptions, build_deployment
from voicefleet_operator.failures import pod_report
from voicefleet_operator.pods import pod_info
from voicefleet_operator.spec import SpecError, Voice, parse_spec, parse_voice

A = "a" * 64
B = "b" * 64
HTTPS = "https://models.example:8443/voices/en_US-ops-medium.onnx"


def url_voice(**model: Any) -> Voice:
    model = {"url": HTTPS, "sha256": A, "configSha256": B, **model}
    return parse_voice(
        {
            "metadata": {"name": "ops", "namespace": "voices", "uid": "u", "generation": 1},
            "spec": {"model": model},
        }
    )


def pod_spec(voice: Voice, options: BuildOptions | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = build_deployment(voice, options or BuildOptions())["spec"]["template"][
        "spec"
    ]
    return spec


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# -- spec ------------------------------------------------------------------------------------


def test_a_url_model_resolves_its_config_and_name() -> None:
    download = url_voice().spec.model.download
    assert download is not None
    assert download.config_url == HTTPS + ".json"
    assert download.model_name == "en_US-ops-medium"
    assert download.cache_key == f"{A}-{B[:16]}"
    assert download.s3 is None


def _in(namespace: str, **model: Any) -> Voice:
    voice = url_voice(**model)
    return voice.model_copy(update={"namespace": namespace})


def test_a_download_made_with_a_credential_is_shared_only_by_its_namespace_and_secret() -> None:
    """With the node cache, a voice whose credential the server refuses must not find a copy
    that another voice's credential fetched: the directory is scoped by both."""
    anonymous = url_voice().spec.model.download
    assert anonymous is not None
    assert anonymous.cache_dir("voices") == anonymous.cache_dir("other") == f"{A}-{B[:16]}"

    def key(namespace: str, secret: str, url: str = HTTPS) -> str:
        download = _in(namespace, url=url, credentialsSecret=secret).spec.model.download
        assert download is not None
        return download.cache_dir(namespace)

    mine = key("voices", "token")
    assert mine.startswith(f"{A}-{B[:16]}-")
    assert key("voices", "token") == mine  # every replica of the voice, and its twins
    assert key("other", "token") != mine
    assert key("voices", "wrong-token") != mine
    assert key("voices", "token", HTTPS.replace("models.", "mirror.")) != mine
    pod = pod_spec(_in("voices", credentialsSecret="token"))
    dest = f"/models/{mine}/en_US-ops-medium.onnx"
    assert env_of(pod["initContainers"][0])[names.FETCH_DEST] == dest
    assert env_of(pod["containers"][0])[names.MODEL] == dest


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        ({"url": HTTPS, "configSha256": B}, "spec.model.sha256: required with spec.model.url"),
        ({"url": HTTPS, "sha256": A}, "spec.model.configSha256: required"),
        (
            {"url": "http://x.example/v.onnx", "sha256": A, "configSha256": B},
            "must be https://host[:port]/path or s3://bucket/key",
        ),
        (
            {"url": "https://user:pw@x.example/v.onnx", "sha256": A, "configSha256": B},
            "without user info",
        ),
        (
            {"url": "https://x.example/v.onnx?sig=1", "sha256": A, "configSha256": B},
            "without user info, query",
        ),
        ({"url": "https://x.example/v.bin", "sha256": A, "configSha256": B}, "must name the .onnx"),
        ({"url": HTTPS, "sha256": "A" * 64, "configSha256": B}, "64 lowercase hex digits"),
        ({"bundled": "en_US-joe-medium", "sha256": A}, "sha256 apply only to a url model"),
        (
            {"bundled": "en_US-joe-medium", "url": HTTPS, "sha256": A, "configSha256": B},
            "set exactly one of bundled",
        ),
        (
            {"url": HTTPS, "sha256": A, "configSha256": B, "s3": {"region": "eu-west-1"}},
            "spec.model.s3: applies only to an s3:// url",
        ),
        (
            {"url": HTTPS, "sha256": A, "configSha256": B, "configUrl": "s3://bkt/c.json"},
            "spec.model.configUrl: must use the same scheme",
        ),
    ],
)
def test_bad_url_models_are_refused_naming_the_field(model: dict[str, Any], fragment: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec({"model": model})
    assert fragment in str(caught.value)


# -- the pod ---------------------------------------------------------------------------------


def test_the_init_container_fetches_into_the_volume_the_server_reads() -> None:
    pod = pod_spec(url_voice())
    (init,) = pod["initContainers"]
    (server,) = pod["containers"]
    assert init["name"] == FETCH_CONTAINER_NAME
    assert init["command"] == ["voicefleet-fetch"]
    assert init["image"] == server["image"]
    assert init["securityContext"] == server["securityContext"]
    assert init["terminationMessagePath"] == "/dev/termination-log"
    dest = f"/models/{A}-{B[:16]}/en_US-ops-medium.onnx"
    assert env_of(init)[names.FETCH_DEST] == dest
    assert env_of(server)[names.MODEL] == dest
    assert {"mountPath": "/models", "name": "model"} in init["volumeMounts"]
    assert {"mountPath": "/models", "name": "model", "readOnly": True} in server["volumeMounts"]
    assert {"emptyDir": {}, "name": "model"} in pod["volumes"]
    assert not any(n.startswith(names.FETCH_PREFIX) for n in env_of(server))


def test_the_fetcher_accepts_what_the_builder_wrote() -> None:
    (init,) = pod_spec(url_voice())["initContainers"]
    plain = {e["name"]: e["value"] for e in init["env"] if "value" in e}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in plain.items():
            mp.setenv(name, value)
        settings = FetchSettings()  # type: ignore[call-arg]  # required fields come from env
    (model, model_dest), (config, config_dest) = settings.remotes()
    assert (model.url, model.sha256) == (HTTPS, A)
    assert (config.url, config.sha256) == (HTTPS + ".json", B)
    assert config_dest == model_dest.with_name("en_US-ops-medium.onnx.json")
    assert settings.termination_message_path == "/dev/termination-log"


def test_credentials_and_ca_only_by_reference() -> None:
    https = env_of(
        pod_spec(url_voice(credentialsSecret="tok", caConfigMap="corp-ca"))["initContainers"][0]
    )
    assert https[names.FETCH_TOKEN] == {"secretKeyRef": {"key": "token", "name": "tok"}}
    assert https[names.FETCH_CA_PEM] == {"configMapKeyRef": {"key": "ca.crt", "name": "corp-ca"}}
    assert names.FETCH_ACCESS_KEY_ID not in https

    s3 = env_of(
        pod_spec(
            url_voice(
                url="s3://voices/en/ops.onnx",
                credentialsSecret="keys",
                s3={"endpoint": "http://minio.storage.svc:9000"},
            )
        )["initContainers"][0]
    )
    assert s3[names.FETCH_ACCESS_KEY_ID] == {"secretKeyRef": {"key": "accessKeyId", "name": "keys"}}
    assert s3[names.FETCH_SECRET_ACCESS_KEY] == {
        "secretKeyRef": {"key": "secretAccessKey", "name": "keys"}
    }
    assert s3[names.FETCH_SESSION_TOKEN] == {
        "secretKeyRef": {"key": "sessionToken", "name": "keys", "optional": True}
    }
    assert s3[names.FETCH_S3_ENDPOINT] == "http://minio.storage.svc:9000"
    assert s3[names.FETCH_S3_REGION] == "us-east-1"
    assert names.FETCH_TOKEN not in s3


def test_the_node_cache_is_a_host_path_read_only_to_the_server() -> None:
    pod = pod_spec(url_voice(), BuildOptions(model_cache_dir="/var/cache/voicefleet"))
    assert {
        "hostPath": {"path": "/var/cache/voicefleet", "type": "DirectoryOrCreate"},
        "name": "model",
    } in pod["volumes"]
    assert {"mountPath": "/models", "name": "model", "readOnly": True} in pod["containers"][0][
        "volumeMounts"
    ]


def test_bundled_and_volume_voices_get_no_init_container_or_cache() -> None:
    bundled = parse_voice(
        {"metadata": {"name": "joe", "namespace": "v"}, "spec": {"model": {"bundled": "x"}}}
    )
    pod = pod_spec(bundled, BuildOptions(model_cache_dir="/var/cache/voicefleet"))
    assert "initContainers" not in pod
    assert all(v["name"] != "model" for v in pod["volumes"])


def test_changing_the_digest_changes_the_pod_template_so_it_rolls() -> None:
    one = build_deployment(url_voice(), BuildOptions())["spec"]["template"]
    two = build_deployment(url_voice(sha256="c" * 64), BuildOptions())["spec"]["template"]
    assert one != two
    assert build_deployment(url_voice(), BuildOptions())["spec"]["template"] == one


# -- S3 addressing ---------------------------------------------------------------------------


def test_s3_urls_become_path_style_or_aws_virtual_hosted() -> None:
    custom = S3Target(endpoint="http://127.0.0.1:8333/", region="us-east-1")
    assert (
        custom.http_url("s3://voices/en/a b.onnx") == "http://127.0.0.1:8333/voices/en/a%20b.onnx"
    )
    default_port = S3Target(endpoint="https://minio.storage.svc:443")
    assert default_port.http_url("s3://voices/x.onnx") == "https://minio.storage.svc/voices/x.onnx"
    aws = S3Target(region="eu-west-1")
    assert aws.http_url("s3://voices/x.onnx") == "https://voices.s3.eu-west-1.amazonaws.com/x.onnx"
    assert aws.headers("https://voices.s3.eu-west-1.amazonaws.com/x.onnx") == {}, "anonymous"
    signed = S3Target(region="eu-west-1", access_key_id="AKID", secret_access_key="SECRET")
    headers = signed.headers("https://voices.s3.eu-west-1.amazonaws.com/x.onnx")
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKID/")
    assert "/eu-west-1/s3/aws4_request" in headers["Authorization"]
    assert "SECRET" not in str(headers)


# -- a failed fetch becomes Degraded ---------------------------------------------------------


def fetch_failed_pod(line: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "ops-1",
            "namespace": "voices",
            "uid": "p",
            "labels": {"voicefleet.io/voice": "ops"},
        },
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "initContainerStatuses": [
                {
                    "name": FETCH_CONTAINER_NAME,
                    "ready": False,
                    "restartCount": 1,
                    "state": {
                        "waiting": {
                            "reason": "CrashLoopBackOff",
                            "message": "back-off 10s restarting failed container=fetch-model",
                        }
                    },
                    "lastState": {
                        "terminated": {"exitCode": 1, "reason": "Error", "message": line}
                    },
                }
            ],
            "containerStatuses": [
                {
                    "name": "server",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": "PodInitializing"}},
                }
            ],
        },
    }


@pytest.mark.parametrize(
    ("reason", "detail"),
    [
        (
            "ModelDigestMismatch",
            f"{HTTPS}: sha256 {'c' * 64} of 10 bytes is not the expected {A}; the file was deleted",
        ),
        ("ModelFetchFailed", f"{HTTPS}: not found (HTTP 404 Not Found)"),
    ],
)
def test_a_failed_fetch_is_the_voices_degraded_reason(reason: str, detail: str) -> None:
    info = pod_info(fetch_failed_pod(format_message(reason, detail)))
    assert info is not None
    (problem,) = pod_report([info]).problems
    assert problem.reason == reason
    assert f"container '{FETCH_CONTAINER_NAME}' exited with code 1" in problem.message
    assert detail in problem.message


def test_a_missing_secret_is_named() -> None:
    body = fetch_failed_pod("")
    status = body["status"]["initContainerStatuses"][0]
    status["state"] = {
        "waiting": {
            "reason": "CreateContainerConfigError",
            "message": 'secret "keys" not found',
        }
    }
    del status["lastState"]
    info = pod_info(body)
    assert info is not None
    (problem,) = pod_report([info]).problems
    assert problem.reason == "CreateContainerConfigError"
    assert 'secret "keys" not found' in problem.message


def test_fetch_env_names_are_the_shared_contract_names() -> None:
    contract = {v for k, v in vars(names).items() if k.startswith("FETCH_") and k != "FETCH_PREFIX"}
    fields = {
        names.FETCH_PREFIX + f.upper()
        for f in FetchSettings.model_fields
        if f not in ("timeout_seconds", "termination_message_path")
    }
    assert fields == contract


def test_the_signer_reproduces_aws_published_sigv4_example(monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS's S3 documentation, "Signature Calculations ... Example: GET Object".

    The signer reads the clock through its module's ``datetime``; the example's instant
    is pinned there. The expected signature is the one the AWS page prints.
    """
    import datetime as real

    import aws_request_signer

    class Pinned(real.datetime):
        @classmethod
        def utcnow(cls) -> real.datetime:  # type: ignore[override]
            return real.datetime(2013, 5, 24, 0, 0, 0)

    class Clock:
        datetime = Pinned

    monkeypatch.setattr(aws_request_signer, "datetime", Clock)
    signer = aws_request_signer.AwsRequestSigner(
        "us-east-1", "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "s3"
    )
    headers = signer.sign_with_headers(
        "GET", "https://examplebucket.s3.amazonaws.com/test.txt", headers={"Range": "bytes=0-9"}
    )
    assert headers["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )
    # What the fetcher sends for the same object without a Range: signed the same way.
    ours = S3Target(
        region="us-east-1",
        access_key_id="AKIAIOSFODNN7EXAMPLE",
        secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ).headers("https://examplebucket.s3.us-east-1.amazonaws.com/test.txt")
    assert ours["x-amz-date"] == "20130524T000000Z"
    assert ours["Authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature="
    )
