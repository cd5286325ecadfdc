"""The README's first command: the demo trains and its loss falls."""
import pytest

import tinyse
from tinyse import demo


def test_demo_loss_falls():
    losses = demo.main(["--steps", "20", "--seed", "1"])
    assert len(losses) == 20
    assert losses[-1] < losses[0] - 0.1


@pytest.mark.skipif(tinyse.gpu_available(), reason="checks the message where there is no GPU")
def test_demo_on_missing_gpu_exits_with_a_message():
    with pytest.raises(SystemExit, match="error: device 'gpu' needs CuPy"):
        demo.main(["--device", "gpu"])
