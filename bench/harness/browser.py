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

    def __init__(self, server, viewport: tuple[int, int] = (1600, 1000)):
        from playwright.sync_api import sync_playwright

        settings = server.base / "user" / "default" / "comfy.settings.json"
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(json.dumps(SETTINGS))
        self.profile = tempfile.mkdtemp(prefix="hypersubject_chromium_")
        self.playwright = sync_playwright().start()
        self.context = self.playwright.chromium.launch_persistent_context(
            self.profile, executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport={"width": viewport[0], "height": viewport[1]})
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

    def set_widgets(self, graph: dict) -> None:
        """Give every widget the value its input has in this API-format graph (same node ids), as a user would:
        the value, then the widget's callback (which loads a Load Image preview)."""
        self.page.evaluate("""(graph) => {
            for (const n of app.graph.nodes) for (const w of n.widgets || []) {
                const inputs = graph[String(n.id)]?.inputs || {};
                if (w.name in inputs && !Array.isArray(inputs[w.name])) {
                    w.value = inputs[w.name];
                    w.callback?.(w.value, app.canvas, n);
                }
            }
            app.canvas.setDirty(true, true); }""", graph)

    def prompt(self) -> dict:
        """The API-format graph the front end would queue for the loaded workflow."""
        return self.page.evaluate("async () => (await app.graphToPrompt()).output")

    def run(self, timeout_ms: int = 300_000) -> str:
        """Click Run and wait for the prompt to end: 'execution_success' or 'execution_error'."""
        with self.page.expect_response(
                lambda r: r.url.endswith("/api/prompt") and r.request.method == "POST") as answer:
            self.page.click('[data-testid="queue-button"]')
        body = answer.value.json()
        if "prompt_id" not in body:
            raise RuntimeError(f"the server refused the queued workflow: {json.dumps(body)[:2000]}")
        ended = "pid => window.__events.find(e => e.detail?.prompt_id === pid)?.ev"
        return self.page.wait_for_function(ended, arg=body["prompt_id"], timeout=timeout_ms).json_value()

    def wait_for_image(self, node_id: str, timeout_ms: int = 60_000) -> int:
        """Wait until the node shows its current output (or Load Image preview) image; that image's width."""
        width = self.page.wait_for_function("""(id) => {
            const item = app.nodeOutputs[id]?.images?.[0], image = app.graph.getNodeById(Number(id))?.imgs?.[0];
            return !!(item && image?.complete && image.src.includes('filename=' + encodeURIComponent(item.filename)))
                   && image.naturalWidth; }""", arg=node_id, timeout=timeout_ms).json_value()
        self.page.evaluate("() => app.canvas.setDirty(true, true)")
        self.page.wait_for_timeout(300)
        return width

    def close(self) -> None:
        self.context.close()
        self.playwright.stop()
        shutil.rmtree(self.profile, ignore_errors=True)
