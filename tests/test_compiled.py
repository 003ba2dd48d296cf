"""The compiled decode step (one graph, no breaks) equals the eager one. Slow: one compile per arch."""

import pytest
import torch

import baselines
import yoco


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gret", "swa", "transformer"])
def test_compiled_decode_matches_eager(arch):
    torch.manual_seed(0)
    if arch == "transformer":
        eager = baselines.from_preset("tiny", n_layers=2).eval()
    else:
        eager = yoco.from_preset("tiny", self_decoder=arch, window=8, n_layers=2).eval()
    compiled = type(eager)(eager.config).eval()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_decode()
    tokens = torch.randint(0, 512, (2, 20))
    caches = [m.allocate_cache(2, 32) for m in (eager, compiled)]
    for m, c in zip((eager, compiled), caches):
        m.prefill(tokens, c)
    for step in range(12):  # the SWA ring (W = 8) wraps; the position advances inside the graph
        nxt = torch.randint(0, 512, (2,))
        torch.testing.assert_close(compiled.decode(nxt, caches[1]), eager.decode(nxt, caches[0]),
                                   rtol=1e-4, atol=1e-5, msg=f"step {step}")
