"""What the tests and the benchmarks both need: ComfyUI in-process, the pack's nodes called as the executor would,
tiny checkpoints on disk, a real server over HTTP, the shipped workflows and the real front end."""
