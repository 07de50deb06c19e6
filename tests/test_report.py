"""`l2i-tf report` on a tiny run: page structure, files, bad inputs, no clobbering, a real headless browser."""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from run_fixture import chirp, current_umask, unexpected_modes, write_wav

from cli.main import main
from l2i_tf import report

EVALUATION_MD = """# L2I evaluation of `runs/tiny`

| metric | value |
|---|---:|
| fidelity top-1 | 0.900 |
| faithfulness τ=0.5 | 1.03 ± 0.10 |
"""


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_run):
    """A report of two generated clips, one undecodable file and one bundled example, from a tiny run (a copy of
    conftest's ``tiny_run``)."""
    root = tmp_path_factory.mktemp("report")
    run = Path(shutil.copytree(tiny_run, root / "run"))
    (run / "evaluation").mkdir()
    (run / "evaluation" / "report.md").write_text(EVALUATION_MD)  # as l2i-tf evaluate writes it
    inputs = root / "inputs"
    mono = write_wav(inputs / "tone.wav", chirp(0.6))
    stereo = write_wav(inputs / "stereo 22k.wav", np.stack([chirp(0.5, 22050), chirp(0.5, 22050, 1)], 1), 22050)
    broken = inputs / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00not a wave file at all")
    out = root / "out" / "report"
    result = invoke("report", run, mono, broken, stereo, "--examples", 1, "--threshold", 0, "--out", out)
    assert result.exit_code == 0, result.output
    return {"root": root, "run": run, "out": out, "output": result.output, "inputs": (mono, broken, stereo)}


class _Page(HTMLParser):
    """Sections (by id) with their audio sources, labels, images and text."""

    def __init__(self):
        super().__init__()
        self.sections, self.labels, self.links = {}, {}, []
        self._section, self._label = None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._section = {"audio": [], "img": [], "text": "", "class": a.get("class", "")}
            self.sections[a["id"]] = self._section
        elif tag == "audio":
            self._section["audio"].append(a)
        elif tag == "img":
            self._section["img"].append(a)
        elif tag == "label":
            self._label = a["for"]
            self.labels[self._label] = ""
        for key in ("src", "href"):
            if key in a:
                self.links.append(a[key])

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None
        elif tag == "label":
            self._label = None

    def handle_data(self, text):
        if self._section is not None:
            self._section["text"] += text
        if self._label is not None:
            self.labels[self._label] += text


def parse(out: Path) -> _Page:
    page = _Page()
    page.feed((out / "index.html").read_text(encoding="utf-8"))
    return page


def test_every_input_has_its_players_and_images_and_every_referenced_file_exists(built):
    out = built["out"]
    page, summary = parse(out), json.loads((out / "report.json").read_text())
    explained = [e for e in summary["inputs"] if "error" not in e]
    assert [e["name"] for e in explained] == ["tone.wav", "stereo 22k.wav", explained[2]["name"]]
    assert explained[2]["true_class"] and explained[2]["input"].endswith(".ogg")  # the bundled example
    for entry in explained:
        section = page.sections[entry["slug"]]
        sources = [a["src"] for a in section["audio"]]
        components = [f"audio/{entry['slug']}/{s['file']}" for s in entry["selected"]]
        assert entry["selected"], "τ = 0 selects every component of positive relevance"
        assert sources == [f"audio/{entry['slug']}/input.wav", f"audio/{entry['slug']}/interpretation.wav", *components]
        for player in section["audio"]:  # every player is labelled and has controls
            assert "controls" in player and page.labels[player["id"]].strip()
        assert [Path(i["src"]).name for i in section["img"]] == [
            f"{entry['slug']}-{kind}.png" for kind in ("spectrograms", "activations", "relevance")
        ]
        assert all(len(i["alt"]) > 40 and int(i["width"]) > 0 for i in section["img"])
        for name, _ in entry["classifier"] + entry["interpreter"]:
            assert name in section["text"]
    files = [link for link in page.links if not link.startswith("#")]
    assert len(files) == sum(len(e["players"]) + len(e["images"]) for e in explained)
    for link in files:
        assert not link.startswith(("http:", "https:", "//", "/")), link  # offline, relative links only
        assert (out / link).is_file() and (out / link).stat().st_size > 0, link
    assert not any(p.name.startswith(".") for p in out.parent.iterdir()), "no temporary folder left behind"


def test_the_report_folder_and_its_files_have_the_mode_the_umask_gives(built):
    """A web server running as another user can read the report (the folder is not tempfile's 0o700)."""
    assert unexpected_modes(built["out"], current_umask()) == {}


def test_header_shows_configuration_and_the_evaluation_tables(built):
    text = (built["out"] / "index.html").read_text(encoding="utf-8")
    for expected in ("run folder", "block2_pool", "frame length (samples)", "1024", "K (components)", "dog, rain"):
        assert expected in text
    assert "<table class='md'><thead><tr><th scope='col'>metric</th>" in text and "<td class='num'>0.900</td>" in text
    assert "<td class='num'>1.03 ± 0.10</td>" in text and "<h3>L2I evaluation of <code>runs/tiny</code></h3>" in text
    assert "evaluation/report.md" in text


def test_undecodable_input_is_listed_with_its_error_and_the_rest_still_builds(built):
    summary = json.loads((built["out"] / "report.json").read_text())
    errors = [e for e in summary["inputs"] if "error" in e]
    assert [e["name"] for e in errors] == ["broken.wav"] and "cannot read audio" in errors[0]["error"]
    section = parse(built["out"]).sections[errors[0]["slug"]]
    assert "error" in section["class"] and "not explained" in section["text"] and "cannot read audio" in section["text"]
    assert not section["audio"] and not section["img"]
    assert not (built["out"] / "audio" / errors[0]["slug"]).exists()
    assert errors[0]["error"].startswith("cannot read audio")  # the path is said once, beside it
    assert "broken.wav: not explained: " in built["output"] and "3 inputs explained, 1 could not be explained" in (
        built["out"] / "index.html"
    ).read_text(encoding="utf-8")


def test_existing_report_is_not_clobbered_without_overwrite_and_replaced_with_it(built, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(built["out"], out)
    before = (out / "index.html").read_bytes()
    tone = built["inputs"][0]
    refused = invoke("report", built["run"], tone, "--out", out)
    assert refused.exit_code == 2 and "already exists" in refused.output and str(out) in refused.output
    assert (out / "index.html").read_bytes() == before
    replaced = invoke("report", built["run"], tone, "--out", out, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert len(json.loads((out / "report.json").read_text())["inputs"]) == 1
    assert not (out / "audio" / "04-broken").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["copy"]


def test_report_without_inputs_or_with_an_unknown_class_is_refused(built, tmp_path):
    nothing = invoke("report", built["run"], "--out", tmp_path / "r")
    assert nothing.exit_code == 2 and "nothing to explain" in nothing.output
    unknown = invoke("report", built["run"], built["inputs"][0], "--class", "Cat", "--out", tmp_path / "r")
    assert unknown.exit_code == 2 and "unknown class 'Cat'" in unknown.output and not (tmp_path / "r").exists()


def test_savedmodel_report_says_h_is_not_available_when_its_run_is_gone(built, tiny_export, tmp_path):
    from l2i_tf import export

    # A copy of the session's export of the same tiny run (τ = 0, N = 3), so its metadata can be changed.
    saved = Path(shutil.copytree(tiny_export["path"], tmp_path / "models" / "l2i" / "1"))
    metadata = saved / export.METADATA_FILE
    metadata.write_text(json.dumps({**json.loads(metadata.read_text()), "run": str(tmp_path / "moved")}))
    page = report.build_report(saved, [built["inputs"][0]], tmp_path / "r")
    entry = page["inputs"][0]
    assert "activations" not in entry["images"] and len(entry["selected"]) <= 3
    assert "H not available from a SavedModel export" in (tmp_path / "r" / "index.html").read_text(encoding="utf-8")
    meta = json.loads(metadata.read_text())
    assert page["title"] == f"L2I report: {meta['name']} v{meta['version']}"  # not the version folder's "1"


def test_markdown_tables_are_rendered_escaped():
    html = report.markdown_to_html("## Fidelity\n\n| pooling | top-1 |\n|:--|--:|\n| <max> | 73.3 % |\n\nmedian `drop`")
    assert html.startswith("<h3>Fidelity</h3>")
    assert "<th scope='col'>pooling</th><th scope='col'>top-1</th>" in html
    assert "<td>&lt;max&gt;</td><td class='num'>73.3 %</td>" in html and "<p>median <code>drop</code></p>" in html


# -------------------------------------------------------------------- the page in a real browser

_BROWSER_JS = """(async () => {
  if (document.readyState !== 'complete') await new Promise(r => addEventListener('load', r, {once: true}));
  const metadata = (a) => new Promise(resolve => {
    if (a.readyState >= 1) return resolve(a.duration);
    const timer = setTimeout(() => resolve(null), 20000);
    const done = () => { clearTimeout(timer); resolve(a.error ? null : a.duration); };
    a.addEventListener('loadedmetadata', done, {once: true});
    a.addEventListener('error', done, {once: true});
  });
  const audios = [...document.querySelectorAll('audio')];
  const durations = await Promise.all(audios.map(metadata));
  const images = [...document.images];
  await Promise.all(images.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })));
  return {
    audio: audios.map((a, i) => ({src: a.getAttribute('src'), duration: durations[i], error: a.error && a.error.code})),
    images: images.map(i => ({src: i.getAttribute('src'), naturalWidth: i.naturalWidth})),
  };
})()"""


class DevTools:
    """A minimal Chrome DevTools protocol client over a WebSocket (RFC 6455; text frames, client-side masking)."""

    def __init__(self, url: str, timeout: float = 60.0):
        host_port, path = url.split("://", 1)[1].split("/", 1)
        host, port = host_port.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += self._exactly(1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"WebSocket handshake refused: {head.decode(errors='replace')}")
        self.last_id = 0

    def _exactly(self, n: int) -> bytes:
        buffer = bytearray()
        while len(buffer) < n:
            chunk = self.sock.recv(n - len(buffer))
            if not chunk:
                raise ConnectionError("the browser closed the DevTools connection")
            buffer += chunk
        return bytes(buffer)

    def _send(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        length = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
        if n >= 1 << 16:
            length = bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = (np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)).tobytes()
        self.sock.sendall(bytes([0x80 | opcode]) + length + mask + masked)

    def _message(self) -> dict:
        data = b""
        while True:
            first, second = self._exactly(2)
            opcode, n = first & 0x0F, second & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._exactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._exactly(8))[0]
            payload = self._exactly(n)  # server frames are not masked
            if opcode == 0x8:
                raise ConnectionError("the browser closed the DevTools connection")
            if opcode == 0x9:
                self._send(0xA, payload)
                continue
            data += payload
            if first & 0x80:
                return json.loads(data)

    def call(self, method: str, **params) -> dict:
        self.last_id += 1
        self._send(0x1, json.dumps({"id": self.last_id, "method": method, "params": params}).encode())
        while True:
            message = self._message()
            if message.get("id") == self.last_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]


def chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)


def open_in_chromium(page: Path, screenshot: Path) -> dict:
    """Open ``page`` from disk in headless Chromium; wait for every <audio>'s metadata and every image; screenshot."""
    profile = Path(tempfile.mkdtemp(prefix="l2i-chromium-"))
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic"]
    command += ["--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    command += ["--mute-audio", "--window-size=1366,900", f"--user-data-dir={profile}", "--remote-debugging-port=0"]
    process = subprocess.Popen(
        [*command, "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 60
        while not (port_file.is_file() and len(port_file.read_text().splitlines()) == 2):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Chromium did not start: {process.stderr.read1().decode(errors='replace')}")
            time.sleep(0.1)
        port = port_file.read_text().splitlines()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
            target = next(t for t in json.loads(response.read()) if t["type"] == "page")
        devtools = DevTools(target["webSocketDebuggerUrl"])
        # A laptop screen: 1366 x 768 CSS pixels.
        devtools.call("Emulation.setDeviceMetricsOverride", width=1366, height=768, deviceScaleFactor=1, mobile=False)
        devtools.call("Page.navigate", url=page.resolve().as_uri())
        value = devtools.call(
            "Runtime.evaluate", expression=_BROWSER_JS, awaitPromise=True, returnByValue=True, timeout=45000
        )
        if "exceptionDetails" in value:
            raise RuntimeError(f"the page check failed: {value['exceptionDetails']}")
        shot = devtools.call("Page.captureScreenshot", format="png")
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        return value["result"]["value"]
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the browser and its helpers: the session started above
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        process.stderr.close()
        shutil.rmtree(profile, ignore_errors=True)


def test_page_plays_every_audio_and_shows_every_image_in_headless_chromium(request, tmp_path):
    """Every <audio> reports a finite duration (the clip's), every image decodes; a 1366 x 768 screenshot is taken
    (kept at ``$L2I_TF_SCREENSHOT`` when set)."""
    if chromium() is None:
        if os.environ.get("CI") or os.environ.get("L2I_TF_BROWSER_TEST") == "required":
            pytest.fail("Chromium is required in CI (.ci/run installs Debian's chromium package) but is not on PATH")
        pytest.skip("Chromium is not installed (apt-get install chromium); the browser check needs it")
    built = request.getfixturevalue("built")
    screenshot = Path(os.environ.get("L2I_TF_SCREENSHOT") or tmp_path / "report.png")
    seen = open_in_chromium(built["out"] / "index.html", screenshot)
    summary = json.loads((built["out"] / "report.json").read_text())
    expected = {p["src"]: e["seconds"] for e in summary["inputs"] if "error" not in e for p in e["players"]}
    assert sorted(a["src"] for a in seen["audio"]) == sorted(expected)
    for player in seen["audio"]:
        duration = player["duration"]
        assert duration is not None and math.isfinite(duration) and duration > 0, player
        assert duration == pytest.approx(expected[player["src"]], abs=0.01), player
    assert len(seen["images"]) == 9 and all(i["naturalWidth"] > 0 for i in seen["images"]), seen["images"]
    png = screenshot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack("!II", png[16:24]) == (1366, 768)
