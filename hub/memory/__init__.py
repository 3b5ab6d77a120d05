"""Local memory: the semantic index of notes and repositories, retrieval and the semantic cache."""
