"""A run folder's timing record: what the model card's "training time" is made of."""

from train.runs import TIMING, record_epoch_time, training_time


def test_epoch_times_add_up_and_a_retried_epoch_counts_once(tmp_path):
    model = tmp_path / "best.keras"
    assert training_time(model) is None  # a run that kept no timing says nothing
    record_epoch_time(tmp_path, "head", 0, 10.0)
    record_epoch_time(tmp_path, "train", 0, 100.0)
    record_epoch_time(tmp_path, "train", 1, 50.0)  # interrupted mid-epoch, then resumed:
    record_epoch_time(tmp_path, "train", 1, 110.0)  # the finished try replaces the first
    assert training_time(model) == (3, 220.0)
    assert (tmp_path / TIMING).is_file() and not (tmp_path / "timing.tmp").exists()
