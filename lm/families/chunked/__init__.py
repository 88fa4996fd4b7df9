"""The shared place of the chunked families (`hierarchical`: words of bytes; `concept`: sentences): the
family-level checks and FLOPs (`family.py`), the encoder/decoder parts (`model.py`), chunk packing (`data.py`)
and chunk-by-chunk sampling (`sampler.py`). Not a family itself: it defines no FAMILY."""
