"""Frame sources: parsing camera.source, the demo clip, files, folders, the live capture machinery and CSI."""

from __future__ import annotations

import itertools
import logging
import re
import socket
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import pytest
from media import damaged_video, face_file, frames_opencv_reads_on, iou, video_frames

from edge.demo import FACE_ASSET, DemoClip
from edge.detectors import create_detector
from edge.protocols import EndOfStream, Frame, FrameSource, MissingExtra, SourceError
from edge.settings import CameraSettings, DetectorSettings
from edge.sources import (
    SOURCES,
    CvCamera,
    DemoSource,
    Grab,
    ImageFolderSource,
    LiveCapture,
    PiCameraSource,
    StreamSource,
    V4L2Source,
    VideoFileSource,
    normalise_image,
    open_source,
    parse_source,
)
from edge.sources.picamera import lores_size

WAIT = 10.0  # generous upper bound for a background thread to get somewhere; never a timing assertion


def drain(source: FrameSource, limit: int = 10_000) -> list[Frame]:
    frames = []
    with pytest.raises(EndOfStream):
        for _ in range(limit):
            frame = source.read(1.0)
            assert frame is not None
            frames.append(frame)
    return frames


def wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.002)


# camera.source parsing ------------------------------------------------------------------------------------------------

def test_registry_holds_every_kind() -> None:
    assert set(SOURCES) == {"csi", "demo", "folder", "stream", "v4l2", "video"}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("demo", ("demo", "")),
        (" DEMO ", ("demo", "")),
        ("csi", ("csi", "0")),
        ("csi:1", ("csi", "1")),
        ("usb:0", ("v4l2", "0")),
        ("2", ("v4l2", "2")),
        ("/dev/video0", ("v4l2", "/dev/video0")),
        ("/dev/v4l/by-id/usb-Cam-video-index0", ("v4l2", "/dev/v4l/by-id/usb-Cam-video-index0")),
        ("rtsp://user:pw@10.0.0.5:554/stream1", ("stream", "rtsp://user:pw@10.0.0.5:554/stream1")),
        ("http://cam.local/mjpg/video.mjpg", ("stream", "http://cam.local/mjpg/video.mjpg")),
        ("https://cam.local/live.m3u8", ("stream", "https://cam.local/live.m3u8")),
        ("rtmp://server/live/key", ("stream", "rtmp://server/live/key")),
    ],
)
def test_parse_source_forms(spec: str, expected: tuple[str, str]) -> None:
    assert parse_source(spec) == expected


@pytest.mark.parametrize(
    ("spec", "cls", "is_live"),
    [("demo", DemoSource, False), ("csi", PiCameraSource, True), ("usb:0", V4L2Source, True), ("rtsp://h/x", StreamSource, True)],
)
def test_every_kind_is_a_frame_source(spec: str, cls: type, is_live: bool) -> None:
    source = open_source(CameraSettings(source=spec))  # built, not opened: no device is touched
    assert isinstance(source, cls) and isinstance(source, FrameSource)
    assert source.live is is_live and source.dropped == 0


def test_parse_source_paths(tmp_path: Path) -> None:
    video = tmp_path / "clip.MKV"
    video.write_bytes(b"x")
    image = tmp_path / "still.png"
    image.write_bytes(b"x")
    assert parse_source(str(video)) == ("video", str(video))
    assert parse_source(str(tmp_path)) == ("folder", str(tmp_path))
    assert parse_source(str(image)) == ("folder", str(image))


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("", "empty"),
        ("webcam", "not a known source"),
        ("ftp://host/video.mp4", "unknown URL scheme 'ftp'"),
        ("usb:front", "usb: takes a camera number"),
        ("/nonexistent/clip.mp4", "does not exist"),
        ("clip.mp4", "does not exist"),
    ],
)
def test_unknown_source_names_the_setting_and_the_accepted_forms(spec: str, problem: str) -> None:
    with pytest.raises(SourceError) as info:
        open_source(CameraSettings(source=spec))
    message = str(info.value)
    assert "camera.source" in message and problem in message
    assert "'demo'" in message and "usb:N" in message and "rtsp://" in message and "folder" in message


def test_unknown_file_type_is_refused(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(SourceError, match=r"camera\.source.*'\.txt'"):
        open_source(CameraSettings(source=str(notes)))


def test_stream_name_hides_the_password() -> None:
    source = open_source(CameraSettings(source="rtsp://admin:s3cret@192.168.1.20:554/h264"))
    assert isinstance(source, StreamSource) and source.live
    assert "s3cret" not in source.name and "admin:***@192.168.1.20:554" in source.name
    with pytest.raises(SourceError) as info:
        parse_source("ftp://admin:s3cret@host/x")
    assert "s3cret" not in str(info.value)


# Frame normalisation --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("image", "shape"),
    [
        (np.full((4, 6, 3), 7, np.uint8), (4, 6, 3)),
        (np.full((4, 6), 7, np.uint8), (4, 6, 3)),
        (np.full((4, 6, 1), 7, np.uint8), (4, 6, 3)),
        (np.full((4, 6, 4), 7, np.uint8), (4, 6, 3)),
        (np.full((4, 6, 3), 7 * 256, np.uint16), (4, 6, 3)),
        (np.full((4, 6), 0.5, np.float32), (4, 6, 3)),
        (np.full((4, 6, 3), 300, np.int32), (4, 6, 3)),
        (np.zeros((0, 6, 3), np.uint8), None),
        (np.zeros((4, 6, 2), np.uint8), None),
        (np.zeros((4, 6, 3, 2), np.uint8), None),
        (np.zeros(12, np.uint8), None),
        (None, None),
        ("not an image", None),
    ],
)
def test_normalise_image(image: Any, shape: tuple[int, ...] | None) -> None:
    out = normalise_image(image)
    if shape is None:
        assert out is None
    else:
        assert out is not None and out.shape == shape and out.dtype == np.uint8 and out.flags.c_contiguous


def test_normalise_image_values() -> None:
    assert normalise_image(np.full((2, 2), 0.5, np.float32))[0, 0, 0] == 127
    assert normalise_image(np.full((2, 2), 65535, np.uint16))[0, 0, 0] == 255
    assert normalise_image(np.full((2, 2, 3), 300, np.int32))[0, 0, 0] == 255
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 2] = 200  # red, fully transparent: the colour survives, alpha goes
    assert normalise_image(bgra)[0, 0].tolist() == [0, 0, 200]


# Demo -----------------------------------------------------------------------------------------------------------------

def test_demo_asset_is_a_small_real_photo() -> None:
    asset = Path(__file__).resolve().parents[2] / "edge" / "assets" / FACE_ASSET
    assert 3_000 < asset.stat().st_size < 30_000
    image = cv2.imread(str(asset))
    assert image is not None and 160 <= max(image.shape[:2]) <= 200
    readme = (asset.parent / "README.md").read_text()
    assert "public domain" in readme and "astronaut" in readme


def test_demo_is_finite_and_the_face_stays_detectable() -> None:
    settings = CameraSettings(source="demo")
    source = open_source(settings)
    assert isinstance(source, DemoSource) and not source.live and source.name == "demo"
    with source:
        frames = drain(source)
    assert len(frames) == settings.demo_frames == 240
    assert [f.index for f in frames] == list(range(240))
    assert all(f.image.shape == (480, 640, 3) and f.image.dtype == np.uint8 for f in frames)
    assert source.dropped == 0 and source.skipped == 0
    clip = source.clip
    assert clip is not None
    # It moves and changes scale, slowly.
    boxes = [clip.face_box(f.index) for f in frames]
    assert len({b.x for b in boxes}) > 50 and max(b.w for b in boxes) > 1.15 * min(b.w for b in boxes)
    assert all(abs(a.x - b.x) <= 8 and abs(a.y - b.y) <= 8 for a, b in itertools.pairwise(boxes))
    detector = create_detector(DetectorSettings())
    found = 0
    for frame, truth in zip(frames, boxes):
        detections = detector.detect(frame)
        if len(detections) == 1 and iou(detections[0].box, truth) >= 0.5:
            found += 1
    assert found >= 0.95 * len(frames), f"demo face found in {found}/{len(frames)} frames"


def test_demo_loops_seamlessly_when_asked() -> None:
    source = open_source(CameraSettings(source="demo", demo_frames=10, loop=True))
    with source:
        frames = [source.read(1.0) for _ in range(25)]
    assert [f.index for f in frames] == list(range(25))
    assert np.array_equal(frames[0].image, frames[10].image) and np.array_equal(frames[3].image, frames[23].image)
    assert not np.array_equal(frames[0].image, frames[5].image)


def test_demo_honours_the_camera_size() -> None:
    clip = DemoClip(frames=4, width=320, height=240)
    image = clip.frame(1)
    assert image.shape == (240, 320, 3)
    box = clip.face_box(1)
    assert box.x >= 0 and box.x + box.w <= 320 and box.y >= 0 and box.y + box.h <= 240


# Video files ----------------------------------------------------------------------------------------------------------

def test_video_file_gives_every_frame_then_ends() -> None:
    path = face_file("pyfeat/single_face.mp4")
    reference = video_frames(path)
    source = open_source(CameraSettings(source=str(path)))
    assert isinstance(source, VideoFileSource) and not source.live
    with source:
        frames = drain(source)
        with pytest.raises(EndOfStream):
            source.read(0.1)  # stays ended
    assert len(frames) == len(reference) == 72
    assert [f.index for f in frames] == list(range(72))
    assert all(np.array_equal(f.image, r) for f, r in zip(frames, reference))
    assert source.dropped == 0 and source.skipped == 0


def test_video_file_loops() -> None:
    path = face_file("pyfeat/single_face.mp4")
    with open_source(CameraSettings(source=str(path), loop=True)) as source:
        frames = [source.read(1.0) for _ in range(150)]
    assert [f.index for f in frames] == list(range(150))
    assert np.array_equal(frames[0].image, frames[72].image) and np.array_equal(frames[5].image, frames[77].image)


def test_a_damaged_frame_is_skipped_and_counted_and_the_file_read_to_its_end(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="edge")
    path = damaged_video(tmp_path / "damaged.avi", frames=200, bad=(100,))
    expected = frames_opencv_reads_on(path)
    assert 190 <= expected < 200  # the damage costs OpenCV a frame or two, not the second half
    source = open_source(CameraSettings(source=str(path)))
    with source:
        frames = drain(source)
    assert len(frames) == expected
    assert source.skipped >= 1 and frames[-1].index == len(frames) + source.skipped - 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("frame 100 cannot be decoded" in m for m in messages), messages
    assert any(f"{len(frames)} frames read, {source.skipped} undecodable frames skipped" in m for m in messages), messages


def test_a_damaged_video_loops_on_past_its_bad_frame(tmp_path: Path) -> None:
    path = damaged_video(tmp_path / "damaged.avi", frames=60, bad=(30,))
    per_pass = frames_opencv_reads_on(path)
    source = open_source(CameraSettings(source=str(path), loop=True))
    source.open()
    try:
        frames = [source.read() for _ in range(per_pass * 2 + 5)]
    finally:
        source.close()
    assert all(f is not None for f in frames) and source.skipped >= 2


def test_undecodable_video_file_is_a_source_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(bytes(range(256)) * 64)
    source = open_source(CameraSettings(source=str(broken)))
    with pytest.raises(SourceError, match=re.escape("broken.mp4")):
        source.open()


def test_read_before_open_is_a_source_error() -> None:
    with pytest.raises(SourceError, match="open"):
        open_source(CameraSettings(source="demo")).read(0.1)


# Image folders --------------------------------------------------------------------------------------------------------

def test_image_folder_normalises_skips_and_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    photo = cv2.imread(str(face_file("pyfeat/single_face.jpg")))
    cv2.imwrite(str(tmp_path / "a_color.jpg"), photo)
    cv2.imwrite(str(tmp_path / "b_gray.png"), cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))
    (tmp_path / "c_broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    cv2.imwrite(str(tmp_path / "d_deep.png"), photo.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "e_alpha.png"), cv2.cvtColor(photo, cv2.COLOR_BGR2BGRA))
    (tmp_path / "notes.txt").write_text("not an image, not counted")
    source = open_source(CameraSettings(source=str(tmp_path)))
    assert isinstance(source, ImageFolderSource) and not source.live
    with caplog.at_level(logging.WARNING), source:
        frames = drain(source)
    assert [f.index for f in frames] == [0, 1, 3, 4]
    assert all(f.image.shape == photo.shape and f.image.dtype == np.uint8 for f in frames)
    assert np.array_equal(frames[2].image, frames[3].image)  # 16-bit and alpha versions of the same (lossless) picture
    assert source.skipped == 1
    assert any("c_broken.jpg" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_image_folder_loops_and_a_single_image_works(tmp_path: Path) -> None:
    photo = cv2.imread(str(face_file("pyfeat/single_face.jpg")))
    cv2.imwrite(str(tmp_path / "one.png"), photo)
    with open_source(CameraSettings(source=str(tmp_path / "one.png"), loop=True)) as source:
        frames = [source.read(1.0) for _ in range(3)]
    assert [f.index for f in frames] == [0, 1, 2] and np.array_equal(frames[2].image, photo)


def test_folder_without_images_is_a_source_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no pictures here")
    with pytest.raises(SourceError, match="holds no images"):
        open_source(CameraSettings(source=str(tmp_path))).open()


def test_folder_of_only_broken_images_ends_even_when_looping(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with open_source(CameraSettings(source=str(tmp_path), loop=True)) as source:
        with pytest.raises(EndOfStream):
            source.read(0.1)
        assert source.skipped == 1


# Live capture machinery, on a real VideoCapture of a video file --------------------------------------------------------

class GatedCamera:
    """A real video file read through OpenCV, one frame per permit, like a camera the test paces.

    ``entered`` counts read() calls: when it reaches n + 1, the first n frames have been handed to the
    capture thread and fully delivered (the thread only calls read() again after delivering).
    """

    def __init__(self, path: Path, vanish_after: int | None = None) -> None:
        self.camera = CvCamera(cv2.VideoCapture(str(path)))
        self.permits = threading.Semaphore(0)
        self.entered = 0
        self.vanish_after = vanish_after
        self.released = threading.Event()

    def read(self) -> Grab | None:
        self.entered += 1
        while not self.permits.acquire(timeout=0.05):
            if self.released.is_set():
                return None
        if self.vanish_after is not None and self.entered > self.vanish_after:
            return None  # unplugged
        return self.camera.read()

    def unblock(self) -> None:
        """Let a read() waiting for a permit return, so that close() finds the capture thread free."""
        self.released.set()

    def give(self, n: int) -> None:
        for _ in range(n):
            self.permits.release()

    def release(self) -> None:
        self.released.set()
        self.camera.release()


def live(opener, **kw) -> LiveCapture:
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("backoff_max_s", 0.04)
    return LiveCapture("test camera", opener, **kw)


def test_live_read_returns_the_newest_frame_and_counts_the_overwritten() -> None:
    path = face_file("pyfeat/single_face.mp4")
    reference = video_frames(path, 13)
    camera = GatedCamera(path)
    with live(lambda: camera) as source:
        assert source.live
        assert source.read(0.05) is None  # nothing captured yet: a timeout, not a block
        camera.give(5)
        wait_until(lambda: camera.entered == 6, "five frames delivered")
        frame = source.read(1.0)
        assert frame is not None and frame.index == 4 and np.array_equal(frame.image, reference[4])
        assert source.dropped == 4
        assert source.read(0.05) is None  # the newest frame is returned once
        # A consumer slower than the camera: 3 more frames arrive between reads, then 1, then 4.
        seen = [frame.index]
        for burst in (3, 1, 4):
            target = camera.entered + burst
            camera.give(burst)
            wait_until(lambda t=target: camera.entered == t, f"{burst} more frames")
            frame = source.read(1.0)
            assert frame is not None
            seen.append(frame.index)
            assert np.array_equal(frame.image, reference[frame.index])
        assert seen == [4, 7, 8, 12]
        assert source.dropped == 4 + 2 + 0 + 3
        assert seen[-1] + 1 == 13 and source.skipped == 0 and source.reopens == 0  # index counts every grabbed frame
        camera.unblock()


def test_live_free_running_accounting_adds_up() -> None:
    path = face_file("pyfeat/single_face.mp4")
    camera = GatedCamera(path)
    camera.give(72)  # the whole file as fast as OpenCV decodes it, then no more frames
    received: list[Frame] = []
    with live(lambda: camera) as source:
        while True:
            finished = camera.entered == 73  # all 72 frames delivered, the 73rd read waits for a permit
            frame = source.read(0.2)
            if frame is not None:
                received.append(frame)
                time.sleep(0.003)  # a slow consumer
            elif finished:
                break
        indices = [f.index for f in received]
        assert indices == sorted(set(indices)) and indices[-1] == 71
        assert len(received) + source.dropped == 72 == indices[-1] + 1
        camera.unblock()


def test_live_reopens_a_vanished_camera_with_backoff(caplog: pytest.LogCaptureFixture) -> None:
    path = face_file("pyfeat/single_face.mp4")
    cameras: list[GatedCamera] = []
    calls = {"n": 0}

    def opener() -> GatedCamera:
        calls["n"] += 1
        if calls["n"] == 1:
            cameras.append(GatedCamera(path, vanish_after=3))
        elif calls["n"] <= 4:
            raise OSError("No such device")
        else:
            cameras.append(GatedCamera(path))
        return cameras[-1]

    with caplog.at_level(logging.INFO, logger="edge.sources.live"), live(opener, backoff_s=0.01, backoff_max_s=0.03) as source:
        cameras[0].give(10)
        wait_until(lambda: len(cameras) == 2, "the camera to be reopened")
        assert not cameras[0].camera._cap.isOpened()  # the vanished one was released
        cameras[1].give(2)
        wait_until(lambda: cameras[1].entered == 3, "frames from the reopened camera")
        frame = source.read(1.0)
        assert frame is not None and frame.index == 4  # indices go on across the reopen: 0-2 before, 3-4 after
        assert source.reopens == 1 and source.connected
        cameras[1].unblock()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("stopped delivering" in m for m in warnings) == 1
    attempts = [m for m in warnings if "reopen attempt" in m]
    assert len(attempts) == 3  # one warning per failed attempt
    assert [m.split("next attempt in ")[1] for m in attempts] == ["0.02 s", "0.03 s", "0.03 s"]  # doubling, capped
    assert any("back after 4 attempt" in r.getMessage() for r in caplog.records)


def test_live_camera_that_opens_but_never_delivers_keeps_backing_off(caplog: pytest.LogCaptureFixture) -> None:
    class DeadCamera:
        def read(self) -> Grab | None:
            return None

        def release(self) -> None:
            pass

    with caplog.at_level(logging.WARNING, logger="edge.sources.live"), live(DeadCamera, backoff_s=0.01, backoff_max_s=0.04) as source:
        wait_until(lambda: source.reopens >= 4, "four reopens")
    delays = [r.getMessage().rsplit(" in ", 1)[1] for r in caplog.records if "stopped delivering" in r.getMessage()]
    assert delays[:4] == ["0.01 s", "0.02 s", "0.04 s", "0.04 s"]  # doubling, capped, never reset by a mere open


def test_live_skips_and_counts_odd_frames() -> None:
    class OddCamera:
        def __init__(self) -> None:
            self.items = [
                np.zeros((0, 0, 3), np.uint8),
                np.full((8, 8), 9, np.uint8),
                np.zeros((8, 8, 2), np.uint8),
                np.full((8, 8, 4), 9, np.uint8),
                np.full((8, 8, 3), 9 * 257, np.uint16),
            ]
            self.done = threading.Event()
            self.closing = threading.Event()

        def read(self) -> Grab | None:
            if self.items:
                return Grab(self.items.pop(0))
            self.done.set()  # everything delivered; now a camera with nothing new to say
            self.closing.wait(WAIT)
            return None

        def release(self) -> None:
            pass

    camera = OddCamera()
    received = []
    with live(lambda: camera) as source:
        camera.done.wait(WAIT)
        while (frame := source.read(0.05)) is not None:
            received.append(frame)
        assert source.skipped == 2
        assert len(received) + source.dropped == 3  # the gray, BGRA and 16-bit frames, read or overwritten
        camera.closing.set()
    assert received and all(f.image.ndim == 3 and f.image.shape[2] == 3 and f.image.dtype == np.uint8 for f in received)
    assert received[-1].index == 4 and received[-1].image[0, 0].tolist() == [9, 9, 9]


def test_live_read_errors_count_as_failures_and_never_escape() -> None:
    class FlakyCamera:
        def __init__(self) -> None:
            self.reads = 0

        def read(self) -> Grab | None:
            self.reads += 1
            if self.reads % 2:
                raise RuntimeError("driver hiccup")
            return Grab(np.full((6, 8, 3), self.reads, np.uint8))

        def release(self) -> None:
            pass

    camera = FlakyCamera()
    with live(lambda: camera) as source:
        wait_until(lambda: camera.reads > 20, "some reads")
        frame = source.read(1.0)
        assert frame is not None and frame.image.shape == (6, 8, 3)
        assert source.reopens == 0  # one failure at a time is not a vanished camera


def test_live_open_failure_is_a_source_error_with_the_hint() -> None:
    def opener():
        raise OSError("Device or resource busy")

    source = LiveCapture("usb:7", opener, hint="is another program using it?")
    with pytest.raises(SourceError, match=r"cannot open usb:7: Device or resource busy; is another program using it\?"):
        source.open()

    def missing():
        raise MissingExtra("install the thing")

    with pytest.raises(MissingExtra):
        LiveCapture("x", missing).open()


def test_live_close_stops_the_thread_even_while_waiting_to_reopen() -> None:
    class GoneCamera:
        def read(self) -> Grab | None:
            return None

        def release(self) -> None:
            pass

    calls = {"n": 0}

    def opener():
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError("gone")
        return GoneCamera()

    source = LiveCapture("vanishing", opener, backoff_s=30.0, backoff_max_s=60.0)
    source.open()
    wait_until(lambda: not source.connected, "the camera to be declared gone")
    source.close()
    assert not any(t.name == "capture vanishing" for t in threading.enumerate())
    assert source.read(0.01) is None


def test_v4l2_device_that_does_not_exist() -> None:
    source = open_source(CameraSettings(source="/dev/video97"))
    assert isinstance(source, V4L2Source) and source.live
    with pytest.raises(SourceError) as info:
        source.open()
    message = str(info.value)
    assert "/dev/video97" in message and "does not exist" in message and "video" in message


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="V4L2 is Linux only")
def test_v4l2_device_that_is_not_a_camera() -> None:
    with pytest.raises(SourceError) as info:
        open_source(CameraSettings(source="/dev/null")).open()
    message = str(info.value)
    assert "/dev/null" in message and "group `video`" in message and "other program" in message


def test_stream_that_cannot_be_reached_is_a_source_error() -> None:
    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source = open_source(CameraSettings(source=f"rtsp://viewer:hunter2@127.0.0.1:{port}/live"))
    with pytest.raises(SourceError) as info:
        source.open()
    assert f"127.0.0.1:{port}" in str(info.value) and "hunter2" not in str(info.value)


# CSI camera through a fake picamera2 (the one piece of hardware this machine cannot have) -----------------------------

class FakePicamera2:
    """Enough of picamera2's API, fed with real frames of a video file."""

    instances: ClassVar[list[FakePicamera2]] = []
    frames: ClassVar[list[np.ndarray]] = []
    fail_open: Exception | None = None

    def __init__(self, camera_num: int = 0) -> None:
        if FakePicamera2.fail_open is not None:
            raise FakePicamera2.fail_open
        self.camera_num = camera_num
        self.config: dict[str, Any] | None = None
        self.started = self.closed = False
        self.count = 0
        FakePicamera2.instances.append(self)

    def create_preview_configuration(self, main=None, lores=None, **kwargs):
        return {"main": dict(main or {}), "lores": dict(lores or {}), **kwargs}

    def configure(self, config) -> None:
        self.config = config

    def stream_configuration(self, name: str) -> dict[str, Any]:
        size = tuple(self.config[name]["size"])
        stride = size[0] * 3 if name == "main" else size[0] + 64  # lores rows padded, as the ISP may do
        return {"size": size, "stride": stride, "format": self.config[name]["format"]}

    def start(self) -> None:
        self.started = True

    def capture_arrays(self, names):
        assert self.started and names == ["main", "lores"]
        image = FakePicamera2.frames[self.count % len(FakePicamera2.frames)]
        self.count += 1
        main = cv2.resize(image, tuple(self.config["main"]["size"]))
        lw, lh = self.config["lores"]["size"]
        yuv = cv2.cvtColor(cv2.resize(main, (lw, lh), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2YUV_I420)
        padded = np.zeros((lh * 3 // 2, lw + 64), np.uint8)
        padded[:, :lw] = yuv
        return [main, padded], {"SensorTimestamp": self.count}

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_picamera2(monkeypatch: pytest.MonkeyPatch):
    module = types.ModuleType("picamera2")
    module.Picamera2 = FakePicamera2
    monkeypatch.setitem(sys.modules, "picamera2", module)
    FakePicamera2.instances = []
    FakePicamera2.frames = video_frames(face_file("pyfeat/single_face.mp4"), 3)
    FakePicamera2.fail_open = None
    yield FakePicamera2
    FakePicamera2.fail_open = None


def test_csi_source_streams_main_bgr_and_lores_gray(fake_picamera2) -> None:
    settings = CameraSettings(source="csi", width=640, height=360, lores_width=320)
    source = open_source(settings)
    assert isinstance(source, PiCameraSource) and source.live and source.name == "csi:0"
    with source:
        (camera,) = fake_picamera2.instances
        assert camera.config["main"] == {"size": (640, 360), "format": "RGB888"}
        assert camera.config["lores"] == {"size": (320, 180), "format": "YUV420"}
        frame = None
        while frame is None:
            frame = source.read(1.0)
    assert camera.closed
    assert frame.image.shape == (360, 640, 3) and frame.image.dtype == np.uint8
    assert frame.gray is not None and frame.gray.shape == (180, 320) and frame.gray_scale == 2.0
    # The gray plane is the Y of the lores stream (not the padding), i.e. the frame's luminance at half size.
    # (Video-range Y is offset and compressed, hence correlation rather than equality.)
    expected = cv2.cvtColor(cv2.resize(frame.image, (320, 180), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
    assert np.corrcoef(frame.gray.ravel(), expected.ravel())[0, 1] > 0.99
    # Detection on the lores plane lands where detection on the full image does.
    detector = create_detector(DetectorSettings())
    on_gray = detector.detect(frame)
    on_image = detector.detect(Frame(image=frame.image, index=0, t_capture=0.0))
    assert len(on_gray) == 1 and len(on_image) == 1 and iou(on_gray[0].box, on_image[0].box) > 0.7


def test_csi_camera_number_is_passed_on(fake_picamera2) -> None:
    with open_source(CameraSettings(source="csi:1")) as source:
        assert source.name == "csi:1" and fake_picamera2.instances[0].camera_num == 1


def test_csi_without_picamera2_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # makes `import picamera2` fail
    source = open_source(CameraSettings(source="csi"))  # building it needs no picamera2
    with pytest.raises(MissingExtra) as info:
        source.open()
    message = str(info.value)
    assert "sudo apt install python3-picamera2" in message and "--system-site-packages" in message


def test_csi_camera_missing_is_a_source_error(fake_picamera2) -> None:
    fake_picamera2.fail_open = IndexError("list index out of range")
    with pytest.raises(SourceError, match=r"CSI camera 0 cannot be opened.*rpicam-hello --list-cameras"):
        open_source(CameraSettings(source="csi")).open()


@pytest.mark.parametrize(
    ("size", "lores_width", "expected"),
    [
        ((640, 480), 320, (320, 240)),
        ((1920, 1080), 320, (320, 180)),
        ((1280, 720), 300, (300, 168)),
        ((320, 240), 640, (320, 240)),
    ],
)
def test_lores_size_keeps_aspect_and_even_dimensions(size, lores_width, expected) -> None:
    assert lores_size(size[0], size[1], lores_width) == expected


def test_a_blocked_read_shows_as_stalled() -> None:
    """A driver that never returns from read() must be visible, so the daemon can stop feeding the watchdog."""
    camera = GatedCamera(face_file("pyfeat/single_face.mp4"))
    source = live(lambda: camera)
    source.open()
    try:
        camera.give(1)
        assert source.read(timeout=5.0) is not None
        time.sleep(0.3)  # the second read() now waits for a permit that never comes
        assert source.stalled_for >= 0.25
        camera.give(1)
        assert source.read(timeout=5.0) is not None
        deadline = time.monotonic() + 5
        while source.stalled_for > 0.2 and time.monotonic() < deadline:  # the next read starts blocking again
            time.sleep(0.01)
        assert source.stalled_for < 0.2
    finally:
        camera.unblock()
        source.close()
