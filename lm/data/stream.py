"""Streaming packing: documents shuffled per epoch, concatenated, split into rows, any row computed on demand.

A training stream is every document of the train split in a fresh random order each epoch, back to back, cut
into rows of R units (the token family's units are (input, target) pairs, `len(ids) + 1` per document). Row r
holds stream units [r * R, (r + 1) * R). Which documents (and which of their units) a row holds follows from the
documents' lengths alone, so a process computes its own rows of any batch without reading anyone else's
records, and a batch index is the whole iterator state (rows are drawn in a keyed random order within windows of
ROW_WINDOW rows, so one long document does not fill a batch) (grain checkpoints it; a resume replays nothing).

Memory does not grow with the corpus: the per-epoch order is a keyed bijection on [0, n) (a Feistel network
with cycle walking, evaluated for a block of positions at a time), and the cumulative length is kept only at
every `BLOCK`-th position of each epoch (n / BLOCK integers); a row's documents are found by a binary search
over those and a scan of one block. `store.lengths` may be a memory-mapped array.
"""

import collections
import hashlib

import numpy as np

BLOCK = 4096
# Rows are drawn in a keyed random order within windows of this many consecutive stream rows, so a batch's
# rows come from all over the window rather than from one long document.
ROW_WINDOW = 1 << 14
_ROUNDS = 4
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _keys(seed: int, epoch: int, salt: str) -> np.ndarray:
  digest = hashlib.blake2b(f"{salt}:{int(seed)}:{int(epoch)}".encode(), digest_size=8 * _ROUNDS).digest()
  return np.frombuffer(digest, dtype=np.uint64).copy()


def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser: a fixed bijection of uint64 with good avalanche."""
  with np.errstate(over="ignore"):
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class Permutation:
  """A keyed random bijection of [0, n), vectorised: `perm(positions)` -> document indices."""

  def __init__(self, n: int, seed: int, epoch: int = 0, salt: str = "docs"):
    self.n = int(n)
    bits = max(2, int(np.ceil(np.log2(max(self.n, 2)))))
    self.half = (bits + 1) // 2
    self.mask = np.uint64((1 << self.half) - 1)
    self.keys = _keys(seed, epoch, salt)

  def _feistel(self, x: np.ndarray) -> np.ndarray:
    h = np.uint64(self.half)
    left, right = x >> h, x & self.mask
    with np.errstate(over="ignore"):
      for k in self.keys:
        left, right = right, left ^ (_mix(right + k) & self.mask)
    return (left << h) | right

  def __call__(self, positions) -> np.ndarray:
    x = self._feistel(np.asarray(positions, dtype=np.uint64))
    out_of_range = x >= self.n
    while out_of_range.any():  # cycle walking: the domain is < 4n, so a few passes at most on average
      x[out_of_range] = self._feistel(x[out_of_range])
      out_of_range = x >= self.n
    return x.astype(np.int64)


class RowPlan:
  """Which documents (and unit ranges of them) fill each row of the epoch-shuffled, packed stream.

  `pieces(first_row, n_rows)` -> (occurrence, doc, lo, hi) int64 arrays covering those rows' units in order:
  document `doc` contributes its units [lo, hi); `occurrence` (epoch * n + position in the epoch's order) is
  unique per appearance, so two appearances of one document never merge into one segment.
  """

  def __init__(self, store, row_len: int, seed: int, extra: int = 0, salt: str = "docs"):
    self.store, self.extra = store, int(extra)  # a document has store.lengths[doc] + extra units
    lengths = store.lengths
    self.n = len(lengths)
    self.row_len = int(row_len)
    self.seed, self.salt = int(seed), salt
    self.total = int(np.sum(lengths, dtype=np.int64)) + self.extra * self.n
    if self.n == 0 or self.total == 0:
      raise ValueError("RowPlan needs at least one document with at least one unit")
    self._perms = collections.OrderedDict()
    self._cum = collections.OrderedDict()
    self._blocks = collections.OrderedDict()

  def _lru(self, cache, key, make, size):
    if key in cache:
      cache.move_to_end(key)
      return cache[key]
    value = cache[key] = make()
    if len(cache) > size:
      cache.popitem(last=False)
    return value

  def perm(self, epoch: int) -> Permutation:
    return self._lru(self._perms, epoch, lambda: Permutation(self.n, self.seed, epoch, self.salt), 4)

  def _block(self, epoch: int, j: int):
    """Documents at positions [j * BLOCK, (j + 1) * BLOCK) of `epoch` and their lengths."""
    def make():
      pos = np.arange(j * BLOCK, min((j + 1) * BLOCK, self.n), dtype=np.int64)
      docs = self.perm(epoch)(pos)
      return docs, np.asarray(self.store.lengths[docs], dtype=np.int64) + self.extra
    return self._lru(self._blocks, (epoch, j), make, 256)

  def cumulative(self, epoch: int) -> np.ndarray:
    """Units before position j * BLOCK of `epoch`'s order, for every block j (plus the total at the end)."""
    def make():
      sums = [0]
      for j in range(-(-self.n // BLOCK)):
        sums.append(int(self._block(epoch, j)[1].sum()))
      return np.cumsum(np.array(sums, dtype=np.int64))
    return self._lru(self._cum, epoch, make, 2)

  def shuffled_rows(self, draws) -> np.ndarray:
    """The stream row taken at each of `draws` (draw indices): a keyed permutation inside each window of
    ROW_WINDOW rows, so any draw's row is computed alone."""
    draws = np.asarray(draws, dtype=np.int64)
    out = np.empty_like(draws)
    for w in np.unique(draws // ROW_WINDOW).tolist():
      at = draws // ROW_WINDOW == w
      perm = self._lru(self._perms, ("rows", w), lambda: Permutation(ROW_WINDOW, self.seed, w, "rows"), 8)
      out[at] = w * ROW_WINDOW + perm(draws[at] % ROW_WINDOW)
    return out

  def pieces(self, first_row: int, n_rows: int = 1):
    a, b = first_row * self.row_len, (first_row + n_rows) * self.row_len
    occ, docs, los, his = [], [], [], []
    while a < b:
      epoch, offset = divmod(a, self.total)
      cum = self.cumulative(epoch)
      j = int(np.searchsorted(cum, offset, side="right")) - 1
      block_docs, block_len = self._block(epoch, j)
      ends = cum[j] + np.cumsum(block_len)
      i = int(np.searchsorted(ends, offset, side="right"))
      while i < len(block_docs) and a < b:
        start = int(ends[i] - block_len[i])
        lo, hi = offset - start, min(int(block_len[i]), offset - start + (b - a))
        if hi > lo:
          occ.append(epoch * self.n + j * BLOCK + i)
          docs.append(int(block_docs[i]))
          los.append(lo)
          his.append(hi)
          a += hi - lo
          offset += hi - lo
        i += 1
    as_array = lambda x: np.array(x, dtype=np.int64)
    return as_array(occ), as_array(docs), as_array(los), as_array(his)


def part_seed(seed: int, part: int) -> int:
  """The shuffle seed of a mixture's part `part` (part 0 of a single source included)."""
  return int.from_bytes(hashlib.blake2b(f"{int(seed)}:{int(part)}".encode(), digest_size=7).digest(), "little")


def quotas(weights, batch_size: int, batch: int) -> np.ndarray:
  """Rows each source has given in the first `batch` batches. Source 0 gets round(w0 * rows), the rest share
  what is left the same way, recursively: every count is a non-decreasing function of the batch index (a batch
  never takes rows back), each stays within one row per source of its exact share, and any batch's counts are
  computed without the ones before it."""
  w = np.asarray(weights, dtype=np.float64)
  out = np.zeros(len(w), dtype=np.int64)
  left = batch * batch_size
  for s in range(len(w) - 1):
    rest = w[s:].sum()
    out[s] = int(np.floor(left * (w[s] / rest) + 0.5))
    left -= out[s]
  out[-1] = left
  return out


def mixture_rows(weights, batch_size: int, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(source, row within that source's stream) for each of the global batch's rows, sources interleaved by a
  keyed shuffle of the batch."""
  before, after = quotas(weights, batch_size, batch), quotas(weights, batch_size, batch + 1)
  source = np.repeat(np.arange(len(before)), after - before)
  row = np.concatenate([np.arange(lo, hi) for lo, hi in zip(before, after)])
  order = Permutation(batch_size, seed, batch, salt="mixture")(np.arange(batch_size))
  return source[order], row[order]
