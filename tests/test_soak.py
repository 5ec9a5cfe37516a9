"""API batch soak: 100 HM-CFG + Save Predicted LoRA prompts through a real server, no failures and no leak."""
import pytest
import safetensors

pytestmark = [pytest.mark.slow, pytest.mark.server]

RSS_GROWTH_MB = 100  # allowed growth of the server's resident memory from prompt 10 to prompt 100


def test_a_hundred_prompts_all_succeed_save_distinct_loras_and_do_not_grow_memory(tmp_path):
    from bench.harness import workflow_files
    from bench.soak import prepared_server, run_soak

    server, images = prepared_server(tmp_path)
    try:
        result = run_soak(server, workflow_files.tiny(workflow_files.api("hypersubject_one_image")), images, 100)
    finally:
        server.stop()
    assert result.succeeded == result.prompts == 100
    assert len(result.saved_loras) == 100 and len({p.name for p in result.saved_loras}) == 100
    for path in result.saved_loras:
        with safetensors.safe_open(path, "pt") as lora:
            assert len([k for k in lora.keys() if k.endswith(".lora_up.weight")]) == 8
    assert result.rss_end_mb <= result.rss_after_10_mb + RSS_GROWTH_MB, (result.rss_after_10_mb, result.rss_end_mb)
