"""Find similar cases: a vector index of a manifest's images and reports (`domainclip index`),
nearest-neighbour search from an image or a text and retrieval-based report drafting
(`domainclip search`). Layer 6 (beside evaluation, whose `embed_split` it reuses).

Modules: `store` (the Milvus collection through pymilvus: Milvus Lite file or a server),
`index` (index.json, rows, incremental add, model fingerprint), `search` (queries, drafting).
See docs/DESIGN.md "Retrieval".
"""
