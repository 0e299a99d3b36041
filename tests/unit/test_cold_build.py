"""The image build beside the Go builds (a fresh machine's cold path), without a compiler.

`imagebuild.build_images` is replaced by a fake (our own seam) that records its thread
and waits on an event, so the tests see the overlap and the error paths without
debootstrap; the Go side is the test body itself.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from voicefleet_localcluster import imagebuild
from voicefleet_localcluster.imagebuild import Built


class FakeImageBuild:
    """Stands in for `imagebuild.build_images`: blocks until released, then returns
    `built` or raises `error`; records the thread it ran on."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.built = [Built("localhost/x:1", "sha256:1", Path("/nonexistent/x.tar"))]

    def __call__(self, flavor: str, *, refresh_base: bool, log: imagebuild.Logger) -> list[Built]:
        self.thread = threading.current_thread()
        log(f"building {flavor}")
        assert self.release.wait(10), "never released"
        if self.error is not None:
            raise self.error
        return self.built


@pytest.fixture
def fake_build(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeImageBuild]:
    fake = FakeImageBuild()
    monkeypatch.setattr(imagebuild, "build_images", fake)
    yield fake
    fake.release.set()


def test_the_images_build_on_another_thread_while_the_caller_works(
    fake_build: FakeImageBuild,
) -> None:
    lines: list[str] = []
    with imagebuild.BackgroundBuild("cpu", imagebuild.serialized(lines.append)) as images:
        # the caller's work (the Go builds) runs while the image build is still going
        assert not fake_build.release.is_set()
        fake_build.release.set()
    assert images.wait() == fake_build.built
    assert fake_build.thread is not None
    assert fake_build.thread is not threading.current_thread()
    assert lines[0] == "images: building cpu"
    assert re.fullmatch(r"images: built in \d+s", lines[-1])


def test_the_image_builds_own_error_reaches_the_caller(fake_build: FakeImageBuild) -> None:
    fake_build.error = imagebuild.ImageBuildError("debootstrap failed (exit 1); last lines: ...")
    fake_build.release.set()
    with imagebuild.BackgroundBuild("cpu", lambda line: None) as images:
        pass
    with pytest.raises(imagebuild.ImageBuildError, match="debootstrap failed"):
        images.wait()


def test_a_go_build_error_waits_for_the_images_and_is_the_one_raised(
    fake_build: FakeImageBuild,
) -> None:
    lines: list[str] = []
    fake_build.error = imagebuild.ImageBuildError("pip install failed")

    def go_builds_fail() -> None:
        with imagebuild.BackgroundBuild("cpu", lines.append):
            threading.Timer(0.2, fake_build.release.set).start()
            raise RuntimeError("go build k8s.io/kubernetes/cmd/kubelet failed (exit 1)")

    with pytest.raises(RuntimeError, match=r"go build k8s\.io/kubernetes/cmd/kubelet failed"):
        go_builds_fail()
    # leaving the block joined the image build (no builder left running) and said how it ended
    assert fake_build.thread is not None
    assert not fake_build.thread.is_alive()
    assert "images: failed too: pip install failed" in lines
