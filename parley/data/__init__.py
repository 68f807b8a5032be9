"""Data for fine-tuning: many source formats → one record type → tokenized, masked examples on disk.

    records.py       the one record type (a list of {role, content} messages) and its checks
    sources.py       `--source` specs (the scheme is documented there) → streams of records
    chat_formats.py, personachat.py, chatterbot.py, tables.py     conversations in the shapes people have
    code_files.py, code_formats.py, code_pairs.py                 code: directories, repos, datasets, pairs
    prose.py, wikipedia.py     prose for continued pre-training: text files, web-text rows, Wikipedia dumps
    cleaning.py      exact / near-duplicate and quality rules for prose, counted by reason
    dedup_index.py   cleaning's duplicate indexes: digests and MinHash LSH band keys in a temporary SQLite file
    textfiles.py     UTF-8 lines and streamed JSON with line numbers (.gz / .bz2 decompressed on the way)
    preference_formats.py   preferences: TRL, HH-RLHF, UltraFeedback, unpaired labels, the store's feedback
    preference_tokenize.py  preference rows: the context once, chosen and rejected replies (for DPO)
    tokenize.py      chat template rendering, assistant-only labels, fitting to length, packing
    prepare.py       `parley data prepare`: the whole pipeline, written atomically with a manifest
    manifest.py      manifest.json: the typed, versioned description of a prepared dataset
    view.py          `parley data stats` and `parley data show`
"""
