"""`lm train ...` with a fault injected at a chosen point, for tests/test_checkpoint_crash.py.

  python tests/crash_run.py MODE STEP -- TRAIN_ARGS...

MODE is one of
  kill-after-save   SIGKILL itself once the checkpoint of STEP is completely written
  kill-during-save  SIGKILL itself while the asynchronous save of STEP is still being written
  sigterm           send itself SIGTERM when the batch for step STEP is drawn (once)
  sigterm-twice     the same, twice in a row
  disk-full         after the checkpoint of STEP is written, limit file size to 1 KB (as a full disk would)
Only the fault is test code; the run, its signal handling and its checkpoints are the real ones.
"""

import os
import resource
import signal
import sys

from lm import cli
from lm.data import pipeline
from lm.train import checkpoint


def main(mode: str, at: int, argv: list[str]) -> int:
  real_save = checkpoint.save

  def save(mngr, step, *args, **kwargs):
    real_save(mngr, step, *args, **kwargs)
    if step != at:
      return
    if mode == "kill-during-save":
      tmp = [p for p in os.listdir(mngr.directory) if p.startswith(f"{step}.") and "tmp" in p]
      print(f"CRASH killing during the save of step {step}; unfinished: {tmp}", flush=True)
      os.kill(os.getpid(), signal.SIGKILL)
    mngr.wait_until_finished()
    if mode == "kill-after-save":
      print(f"CRASH killing after the save of step {step}", flush=True)
      os.kill(os.getpid(), signal.SIGKILL)
    if mode == "disk-full":
      signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG
      resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))
  checkpoint.save = save

  real_iterator = pipeline.TokenData.train_iterator

  def train_iterator(self, *args, **kwargs):
    it = real_iterator(self, *args, **kwargs)
    drawn = int(it.get_state()["next_index"])  # batches already drawn: resumed runs start past 0

    class Faulty:
      def __next__(self):
        nonlocal drawn
        drawn += 1
        if drawn == at and mode.startswith("sigterm"):
          for _ in range(2 if mode == "sigterm-twice" else 1):
            os.kill(os.getpid(), signal.SIGTERM)
        return next(it)

      def get_state(self):
        return it.get_state()

      def set_state(self, state):
        nonlocal drawn
        it.set_state(state)
        drawn = int(state["next_index"])
    return Faulty()
  pipeline.TokenData.train_iterator = train_iterator
  return cli.main(argv)


if __name__ == "__main__":
  sep = sys.argv.index("--")
  sys.exit(main(sys.argv[1], int(sys.argv[2]), sys.argv[sep + 1:]))
