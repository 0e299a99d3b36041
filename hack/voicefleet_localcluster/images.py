"""What `make images` builds, named and keyed: pure decisions, no process is run here.

`make images` builds the server and control images from `docker/*.Dockerfile` (the files
a user builds with `docker build`) on a Debian bookworm base made with debootstrap, since
no registry is reachable from the machines VoiceFleet is developed on. The edge that runs
debootstrap, the builder and containerd's `ctr` is `imagebuild.py`; this module decides
everything that can be decided without them, so it is tested alone:

- the image references, exactly as the chart and the operator spell them
  (`ghcr.io/voicefleet/voicefleet-server:<version>`, `-cuda` for the GPU flavour);
- the base image's recipe and its cache key (rebuild only when an input changes);
- the Debian mirror, read from the host's own apt sources (the mirror apt already uses);
- the builder (docker or podman when a daemon answers, else buildah) and its command lines;
- the build arguments each Dockerfile declares and is given.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

REPO_ROOT: Final = Path(__file__).resolve().parent.parent.parent
DOCKER_DIR: Final = REPO_ROOT / "docker"

REGISTRY: Final = "ghcr.io/voicefleet"
SERVER: Final = "voicefleet-server"
CONTROL: Final = "voicefleet-control"
GPU_SUFFIX: Final = "-cuda"
"""Tag suffix of the GPU build; the operator appends the same (`spec.GPU_IMAGE_SUFFIX`)."""

BASE_REF: Final = "localhost/voicefleet-base:bookworm"
"""The local base image: `localhost/` so no builder ever tries to pull it from a registry."""
BASE_KEY_LABEL: Final = "io.voicefleet.base-key"
"""Label on the base image holding its recipe's cache key (a mismatch means rebuild)."""

Flavor = Literal["cpu", "gpu"]
FLAVORS: Final[tuple[Flavor, ...]] = ("cpu", "gpu")
BuilderKind = Literal["docker", "podman", "buildah"]

DEFAULT_MIRROR: Final = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR: Final = "http://deb.debian.org/debian-security"

BASE_RECIPE_VERSION: Final = 1
"""Bump when `imagebuild.build_base` changes what it does to the root filesystem."""

SLIM_DPKG_CONFIG: Final = """\
# VoiceFleet base: no documentation, manuals or translations in images (license texts stay).
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
"""
"""dpkg excludes written into the base, so the Dockerfiles' own apt-get installs stay slim."""

APT_CONFIG: Final = """\
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
"""


def version(init_file: Path = REPO_ROOT / "crds" / "voicefleet_api" / "__init__.py") -> str:
    """The package version (`voicefleet_api.__version__`), read without importing it.

    It is the chart's appVersion and the operator's default image tag, so the images
    carry it as their tag and a default `helm install` finds them on the node.
    """
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', init_file.read_text(), re.MULTILINE)
    if not match:
        raise ValueError(f"no __version__ in {init_file}")
    return match.group(1)


def image_ref(name: str, tag: str, flavor: Flavor = "cpu", registry: str = REGISTRY) -> str:
    """`registry/name:tag`, with the GPU suffix on the server's GPU flavour."""
    suffix = GPU_SUFFIX if flavor == "gpu" else ""
    return f"{registry}/{name}:{tag}{suffix}"


@dataclass(frozen=True)
class ImageSpec:
    """One image to build: its reference, Dockerfile and the build arguments it is given."""

    ref: str
    dockerfile: Path
    build_args: Mapping[str, str] = field(default_factory=dict)

    @property
    def archive_name(self) -> str:
        """Its archive file name: `voicefleet-server-0.1.0.tar` for `…/voicefleet-server:0.1.0`."""
        return re.sub(r"[^A-Za-z0-9._-]", "-", self.ref.rsplit("/", 1)[-1]) + ".tar"


def image_specs(
    flavor: Flavor, tag: str, base_ref: str = BASE_REF, registry: str = REGISTRY
) -> list[ImageSpec]:
    """The images `make images` builds: the server of `flavor`, and (cpu only) the control.

    The control image has no GPU variant (the operator and router need none), so
    `FLAVOR=gpu` builds just the server's CUDA flavour.
    """
    server = ImageSpec(
        ref=image_ref(SERVER, tag, flavor, registry),
        dockerfile=DOCKER_DIR / "inference.Dockerfile",
        build_args={"BASE_IMAGE": base_ref, "FLAVOR": flavor},
    )
    if flavor == "gpu":
        return [server]
    control = ImageSpec(
        ref=image_ref(CONTROL, tag, "cpu", registry),
        dockerfile=DOCKER_DIR / "control.Dockerfile",
        build_args={"BASE_IMAGE": base_ref},
    )
    return [server, control]


_ARG = re.compile(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)(?:=(\S*))?", re.IGNORECASE | re.MULTILINE)


def dockerfile_args(text: str) -> dict[str, str | None]:
    """Every `ARG` a Dockerfile declares, with its default (None when it has none).

    Used to refuse a build argument the file does not declare: docker only warns about
    one and builds something else than the caller meant (a typo in BASE_IMAGE would
    silently build on python:*-slim instead of our base).
    """
    args: dict[str, str | None] = {}
    for match in _ARG.finditer(text):
        name, default = match.group(1), match.group(2)
        if name not in args or args[name] is None:
            args[name] = default
    return args


def undeclared_args(spec: ImageSpec, dockerfile_text: str) -> list[str]:
    """The build arguments of `spec` that its Dockerfile does not declare."""
    declared = dockerfile_args(dockerfile_text)
    return sorted(name for name in spec.build_args if name not in declared)


@dataclass(frozen=True)
class AptSource:
    """One apt source: a repository URI, its suites and components."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]


def parse_apt_sources(text: str) -> list[AptSource]:
    """apt sources in either format: one-line (`deb URI SUITE COMP...`) or deb822 stanzas.

    Only `deb` entries count (not `deb-src`); options in brackets are skipped.
    """
    sources: list[AptSource] = []
    if re.search(r"^\s*(Types|URIs)\s*:", text, re.MULTILINE | re.IGNORECASE):
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.lstrip().startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split() or "uris" not in fields:
                continue
            suites = tuple(fields.get("suites", "").split())
            components = tuple(fields.get("components", "").split())
            for uri in fields["uris"].split():
                sources.append(AptSource(uri.rstrip("/"), suites, components))
        return sources
    for raw in text.splitlines():
        line = re.sub(r"\[[^\]]*\]", " ", raw.split("#", 1)[0]).split()
        if len(line) >= 3 and line[0] == "deb":
            sources.append(AptSource(line[1].rstrip("/"), (line[2],), tuple(line[3:])))
    return sources


def debian_mirrors(sources: Iterable[AptSource], suite: str = "bookworm") -> tuple[str, str]:
    """(main mirror, security mirror) for `suite` among the host's apt sources.

    The mirror apt already uses is one the machine can reach; Debian's own redirector
    is the fallback for a host whose sources do not name the suite (not Debian, or
    another release).
    """
    mirror = security = ""
    for source in sources:
        if not source.uri.startswith(("http://", "https://")):
            continue
        if not mirror and suite in source.suites:
            mirror = source.uri
        if not security and f"{suite}-security" in source.suites:
            security = source.uri
    return mirror or DEFAULT_MIRROR, security or DEFAULT_SECURITY_MIRROR


@dataclass(frozen=True)
class BaseRecipe:
    """Everything that decides the base root filesystem's content; its key names the cache."""

    mirror: str = DEFAULT_MIRROR
    security_mirror: str = DEFAULT_SECURITY_MIRROR
    suite: str = "bookworm"
    variant: str = "minbase"
    packages: tuple[str, ...] = ("python3", "python3-venv")
    """Python from Debian: both Dockerfiles then skip their own install of it."""

    @property
    def sources_list(self) -> str:
        """The base's /etc/apt/sources.list: the release, its updates and security."""
        return (
            f"deb {self.mirror} {self.suite} main\n"
            f"deb {self.mirror} {self.suite}-updates main\n"
            f"deb {self.security_mirror} {self.suite}-security main\n"
        )

    @property
    def key(self) -> str:
        """A digest of the recipe: the same inputs reuse the cached base, others rebuild it."""
        payload = json.dumps(
            {
                "version": BASE_RECIPE_VERSION,
                "mirror": self.mirror,
                "security": self.security_mirror,
                "suite": self.suite,
                "variant": self.variant,
                "packages": sorted(self.packages),
                "dpkg": SLIM_DPKG_CONFIG,
                "apt": APT_CONFIG,
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def pip_ca_bundle(
    environ: Mapping[str, str], pip_conf_texts: Sequence[str], system_bundle: Path | None
) -> Path | None:
    """The CA bundle the host's pip trusts, to hand to the build's pip as a secret.

    Where HTTPS to PyPI passes an inspecting proxy, the host trusts the proxy's CA (through
    PIP_CERT or pip.conf's `cert`), but pip inside a build only has its own bundle and fails
    with CERTIFICATE_VERIFY_FAILED. The bundle goes to the build as a secret mount, so it
    is never stored in an image. Order: $PIP_CERT, pip.conf `[global] cert`, the system
    bundle (what the host trusts for everything else).
    """
    if environ.get("PIP_CERT"):
        return Path(environ["PIP_CERT"])
    for text in pip_conf_texts:
        parser = configparser.ConfigParser()
        try:
            parser.read_string(text)
        except configparser.Error:
            continue
        if parser.has_option("global", "cert"):
            return Path(parser.get("global", "cert"))
    return system_bundle


@dataclass(frozen=True)
class Builder:
    """A container builder and the command lines `make images` runs with it.

    buildah (no daemon) keeps its storage under VoiceFleet's cache dir, so a build never
    touches a system-wide image store, and runs `RUN` steps with chroot isolation and the
    host's network (apt and PyPI). docker and podman use their own stores.
    """

    kind: BuilderKind
    storage: Path | None = None
    """buildah only: `--root`; its run state goes to a sibling `run` directory."""

    def _base(self) -> list[str]:
        if self.kind == "buildah" and self.storage is not None:
            return ["buildah", "--root", str(self.storage), "--runroot", str(self.storage) + "-run"]
        return [self.kind]

    def cmd(self, *args: str) -> list[str]:
        """Any other command of this builder, with its storage flags."""
        return [*self._base(), *args]

    def build(self, spec: ImageSpec, context: Path, secrets: Mapping[str, Path]) -> list[str]:
        """Build `spec` from `context`, reusing cached layers, never pulling the local base."""
        argv = self._base()
        if self.kind == "buildah":
            argv += ["bud", "--isolation", "chroot", "--network", "host", "--layers"]
        else:
            argv += ["build", "--network", "host"]
        argv += ["--pull=never" if self.kind != "docker" else "--pull=false"]
        for name, path in sorted(secrets.items()):
            argv += ["--secret", f"id={name},src={path}"]
        for name, value in spec.build_args.items():
            argv += ["--build-arg", f"{name}={value}"]
        argv += ["-f", str(spec.dockerfile), "-t", spec.ref, str(context)]
        return argv

    def image_id(self, ref: str) -> list[str]:
        """Print the image's ID (fails when it does not exist)."""
        if self.kind == "buildah":
            return self.cmd("inspect", "--type", "image", "--format", "{{.FromImageID}}", ref)
        return [*self._base(), "image", "inspect", "--format", "{{.Id}}", ref]

    def label(self, ref: str, label: str) -> list[str]:
        """Print one label of a local image (fails when the image does not exist)."""
        template = f'{{{{index .Config.Labels "{label}"}}}}'
        if self.kind == "buildah":
            template = f'{{{{index .OCIv1.Config.Labels "{label}"}}}}'
            return [*self._base(), "inspect", "--type", "image", "--format", template, ref]
        return [*self._base(), "image", "inspect", "--format", template, ref]

    def export(self, ref: str, archive: Path) -> list[str]:
        """Write the image to a docker-archive (`docker save` format) for `ctr images import`.

        Not an OCI archive: those hold gzip-compressed layers, and buildah 1.28 ignores
        `--disable-compression` for them, so every export of the ~550 MB server image
        spent a minute of CPU compressing layers that containerd unpacks again at once on
        this same machine. A docker-archive's layers are plain tars (measured: 11 s against
        63 s for the server image on the loaded 2-core machine).
        """
        if self.kind == "buildah":
            return self.cmd("push", "-q", ref, f"docker-archive:{archive}:{ref}")
        if self.kind == "podman":
            return ["podman", "save", "--format", "docker-archive", "-o", str(archive), ref]
        return ["docker", "save", "-o", str(archive), ref]


def choose_builder(
    docker_answers: bool, podman_answers: bool, buildah_present: bool, storage: Path
) -> Builder | None:
    """docker or podman when its daemon/engine answers, else buildah; None when none can."""
    if docker_answers:
        return Builder("docker")
    if podman_answers:
        return Builder("podman")
    if buildah_present:
        return Builder("buildah", storage)
    return None


def archive_tags(manifest_json: str) -> list[str]:
    """The image references a docker-archive's `manifest.json` names (its `RepoTags`).

    They are the names `ctr images import` gives the images: checked after an export so
    that the node holds the image under exactly the reference the chart asks for.
    """
    entries = json.loads(manifest_json)
    return [tag for entry in entries for tag in entry.get("RepoTags") or []]
