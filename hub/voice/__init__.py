"""The voice feature: audio in, wake words and transcripts out."""
