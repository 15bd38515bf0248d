"""Data sources and row cleaning for the prepare and tokenize stages.

- `schema`: the translation and classification row schemas, and the canonical columns;
- `files`, `hub`, `builtin` (+ `toy_translation`, `toy_sentiment`): the three kinds of source;
- `rows`: raw records and lines -> canonical rows, a bad row a counted drop, never an error;
- `damage`: damaged input files (checks before Ray, reading that names the file);
- `cleaning`: normalisation, drop rules, content keys, hash splits, deduplication;
- `encoding`: token ids from a SentencePiece model, as a Ray Data `map_batches` callable;
- `storage`: reading and writing stage outputs by URI.
"""
