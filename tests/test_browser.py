"""The shipped workflows in the real ComfyUI front end: no missing nodes, widgets with tooltips, queued from the UI."""
import pytest

from bench.harness import workflow_files
from bench.harness.comfy_runtime import REPO
from bench.harness.workflow_files import tiny

pytestmark = [pytest.mark.slow, pytest.mark.server]

PACK_TYPES = {"HyperSubjectLoader", "HyperSubjectEncode", "HyperSubjectPredictLoRA", "HyperSubjectApplyLoRA",
              "HyperSubjectSaveLoRA", "HMCFGKSampler", "HMCFGGuider"}
SCREENSHOTS = REPO / ".cache" / "screenshots"


@pytest.fixture(scope="module")
def front_end(served):
    from bench.harness.browser import FrontEnd

    ui = FrontEnd(served)
    yield ui
    ui.close()


@pytest.mark.parametrize("name", workflow_files.names())
def test_each_workflow_loads_with_no_missing_node_and_queues_as_its_api_twin(front_end, name):
    front_end.load(workflow_files.ui(name), name)
    state = front_end.page.evaluate("""() => ({
        missing: app.graph.nodes.filter(n => n.has_errors || !(n.type in LiteGraph.registered_node_types))
                                .map(n => n.type),
        ours: app.graph.nodes.filter(n => n.type.startsWith('HyperSubject') || n.type.startsWith('HMCFG')).map(n => ({
            type: n.type,
            widgets: (n.widgets || []).filter(w => w.type !== 'button').map(w => ({
                name: w.name,
                tooltip: w.tooltip ?? n.constructor.nodeData.inputs[w.name]?.tooltip})),
            description: n.constructor.nodeData.description})),
    })""")
    assert state["missing"] == []
    twin = workflow_files.api(name)
    assert len(state["ours"]) == sum(n["class_type"] in PACK_TYPES for n in twin.values())
    for node in state["ours"]:
        assert node["type"] in PACK_TYPES and node["description"]
        untipped = [w["name"] for w in node["widgets"] if not w["tooltip"]]
        assert not untipped, f"{node['type']} widgets without a tooltip: {untipped}"
    prompt = front_end.prompt()
    assert {i: {"class_type": n["class_type"], "inputs": n["inputs"]} for i, n in prompt.items()} == \
           {i: {"class_type": n["class_type"], "inputs": n["inputs"]} for i, n in twin.items()}


def test_the_one_image_workflow_runs_from_the_run_button_and_shows_its_image(front_end):
    front_end.load(workflow_files.ui("hypersubject_one_image"), "hypersubject_one_image")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    front_end.page.mouse.move(5, 500)
    front_end.page.screenshot(path=str(SCREENSHOTS / "hypersubject_one_image.png"))
    front_end.set_widgets(tiny(workflow_files.api("hypersubject_one_image")))
    assert front_end.run() == "execution_success"
    save_node = next(i for i, n in workflow_files.api("hypersubject_one_image").items()
                     if n["class_type"] == "SaveImage")
    assert front_end.wait_for_image(save_node) == 64
    front_end.page.screenshot(path=str(SCREENSHOTS / "hypersubject_one_image_after_run.png"))
    assert front_end.errors == []


def test_a_workflow_from_a_future_version_with_an_unknown_widget_value_still_loads_and_queues_the_same(front_end):
    import copy

    name = "hypersubject_one_image"
    future = copy.deepcopy(workflow_files.ui(name))
    sampler = next(n for n in future["nodes"] if n["type"] == "HMCFGKSampler")
    sampler["widgets_values"].append(0.5)  # a widget a later version might add at the end
    future["extra"]["hypersubject_future_field"] = True
    front_end.load(future, "future")
    missing = front_end.page.evaluate("() => app.graph.nodes.filter(n => n.has_errors).map(n => n.type)")
    assert missing == []
    prompt = front_end.prompt()
    assert {i: n["inputs"] for i, n in prompt.items()} == {i: n["inputs"] for i, n in workflow_files.api(name).items()}
