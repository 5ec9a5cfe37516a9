"""The real ComfyUI front end in headless Debian chromium, driven by Playwright (../shared/browser-testing.md)."""
import json
import shutil
import tempfile
from urllib.parse import urlparse

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
# A fresh user otherwise gets the template browser instead of a canvas; LOD 0 keeps zoomed-out text legible.
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.InstalledVersion": "1.32.9",
            "LiteGraph.Canvas.MinFontSizeForLOD": 0, "Comfy.Minimap.Visible": False}
READY = """() => !!(window.app && app.graph && app.canvas && app.vueAppReady && window.LiteGraph
                   && Object.keys(LiteGraph.registered_node_types).length > 0)"""
# Console noise of an offline front end that is not ours (browser-testing.md §7).
HARMLESS = ("api.comfy.org", "404 (Not Found)", "ERR_FAILED", "reading 'id')")


class FrontEnd:
    """One browser page on the server's UI; console errors that are not known noise are collected."""

    def __init__(self, server):
        from playwright.sync_api import sync_playwright

        settings = server.base / "user" / "default" / "comfy.settings.json"
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(json.dumps(SETTINGS))
        self.profile = tempfile.mkdtemp(prefix="hypersubject_chromium_")
        self.playwright = sync_playwright().start()
        self.context = self.playwright.chromium.launch_persistent_context(
            self.profile, executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport={"width": 1600, "height": 1000})
        self.context.add_init_script("localStorage.setItem('vueNodesBannerDismissed','true')")
        self.context.route(lambda url: urlparse(url).hostname not in ("127.0.0.1", "localhost"),
                           lambda route: route.abort())
        self.page = self.context.pages[0]
        self.errors = []
        self.page.on("console", lambda m: m.type == "error" and self._note(m.text))
        self.page.on("pageerror", lambda e: self._note(str(e)))
        self.page.goto(server.url + "/", wait_until="domcontentloaded")
        self.page.wait_for_function(READY, timeout=120_000)
        self.page.evaluate("""() => { window.__events = [];
            for (const ev of ['execution_success', 'execution_error'])
                comfyAPI.api.api.addEventListener(ev, e => window.__events.push({ev, detail: e.detail})); }""")

    def _note(self, text: str) -> None:
        if not any(noise in text for noise in HARMLESS):
            self.errors.append(text)

    def load(self, workflow: dict, name: str) -> None:
        self.page.evaluate("""async ([wf, name]) => {
            await app.loadGraphData(wf, true, true, name, {showMissingNodesDialog: false});
            await new Promise(r => setTimeout(r, 300));
            await app.extensionManager.command.execute('Comfy.Canvas.FitView');
            app.canvas.setDirty(true, true); }""", [workflow, name])
        self.page.wait_for_timeout(500)

    def close(self) -> None:
        self.context.close()
        self.playwright.stop()
        shutil.rmtree(self.profile, ignore_errors=True)
