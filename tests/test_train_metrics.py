"""Metrics (`lm/train/metrics.py`): JSON lines and TensorBoard events on process 0, a progress line, and a
full disk costing the metrics but not the run."""

import json

from lm.train import metrics


def test_records_are_json_lines_with_the_step_and_appended(tmp_path):
  w = metrics.MetricsWriter(tmp_path)
  w.write(1, {"loss": 2.5, "bpb": 3})
  w.close()
  w = metrics.MetricsWriter(tmp_path)  # a resumed run appends
  w.write(2, {"loss": 2.0})
  w.close()
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert lines == [{"step": 1, "loss": 2.5, "bpb": 3.0}, {"step": 2, "loss": 2.0}]
  assert any((tmp_path / "tensorboard").iterdir())


def test_other_processes_write_nothing(tmp_path):
  w = metrics.MetricsWriter(tmp_path / "w", enabled=False)
  w.write(1, {"loss": 1.0})
  w.close()
  assert not (tmp_path / "w").exists()


def test_a_write_error_warns_once_and_stops_the_metrics(tmp_path, capsys):
  w = metrics.MetricsWriter(tmp_path)

  class Full:
    def write(self, _):
      raise OSError(28, "No space left on device")

    def close(self):
      pass
  w._jsonl = Full()  # pylint: disable=protected-access
  w.write(1, {"loss": 1.0})
  w.write(2, {"loss": 1.0})
  err = capsys.readouterr().err
  assert err.count("warning: cannot write metrics") == 1 and "No space left on device" in err and not w.enabled


def test_progress_line(capsys):
  p = metrics.Progress(100)
  p.update(10, {"loss": 2.0, "bpb": 3.0, "tokens_per_sec": 12_300.0})
  assert capsys.readouterr().out.strip() == "step 10/100 | loss 2.0000 | bpb 3.0000 | 12.3k tok/s | eta ?"
  assert metrics.Progress(100, enabled=False).update(10, {}) is None and capsys.readouterr().out == ""
