import logging

from trashseg.progress import Progress, format_seconds


def test_lines_at_interval_with_rate_and_eta(caplog):
    now = [0.0]
    progress = Progress(100, "train", unit="img", interval_s=10, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="trashseg.progress"):
        now[0] = 5
        assert progress.update(10, loss=0.5) is None  # inside the interval: quiet
        now[0] = 20
        line = progress.update(10, loss=0.25, lr=1e-4)
    # 20 done in 20 s -> 1 img/s, 80 left -> 80 s
    assert line == "train 20/100 (20%) 1.00 img/s eta 0:01:20 loss=0.25 lr=0.0001"
    assert caplog.messages == [line]


def test_last_step_always_reported():
    now = [0.0]
    progress = Progress(3, "crf", clock=lambda: now[0], interval_s=1000)
    progress.update(2)
    now[0] = 1
    assert progress.update(1).startswith("crf 3/3 (100%)")


def test_format_seconds():
    assert format_seconds(3725) == "1:02:05"
