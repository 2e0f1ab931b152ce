"""Per-namespace vector indexes over FAISS: a library that knows nothing of HTTP, orgs or crypto."""
