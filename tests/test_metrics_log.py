from selfplay.metrics import MetricsLog


def test_a_resumed_log_drops_the_rows_logged_past_its_checkpoint(tmp_path):
    """A session killed while it wrote its step-6 checkpoint flushed the metrics (the
    checkpoint's first write) but never completed the checkpoint: the run resumes at step 4,
    where steps 5 and 6 are taken again. Their first rows go; step 4's evaluation, which
    finished after step 4's checkpoint, stays."""
    first = MetricsLog(tmp_path, "run", ray_gauges=False)
    for step in (2, 4, 5, 6):
        first.log(step, wall_s=float(step), values={"loss": step / 10})
    first.log(4, wall_s=5.5, values={"eval/score": 0.5})  # queued at step 4, logged later
    first.close()

    resumed = MetricsLog(tmp_path, "run", ray_gauges=False, resumed_at=4)
    assert [(r["step"], r["name"]) for r in resumed.rows] == [(2, "loss"), (4, "loss"), (4, "eval/score")]
    resumed.log(5, wall_s=7.0, values={"loss": 0.45})
    resumed.close()
    again = MetricsLog(tmp_path, "run", ray_gauges=False)  # a fresh reading keeps every row
    assert [(r["step"], r["value"]) for r in again.rows if r["name"] == "loss"] == [
        (2, 0.2),
        (4, 0.4),
        (5, 0.45),
    ]


def test_tensorboard_shows_a_resumed_runs_steps_once(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = MetricsLog(tmp_path, "run", ray_gauges=False)
    for step in (2, 4, 5, 6):
        first.log(step, wall_s=float(step), values={"loss": step / 10})
    first.close()
    resumed = MetricsLog(tmp_path, "run", ray_gauges=False, resumed_at=4)
    for step in (5, 6):
        resumed.log(step, wall_s=float(step), values={"loss": step / 100})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    shown = [(e.step, round(e.value, 6)) for e in events.Scalars("loss")]
    assert shown == [(2, 0.2), (4, 0.4), (5, 0.05), (6, 0.06)]
