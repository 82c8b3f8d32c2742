"""Tokenisers: code tokens, subword BPE, byte-level BPE, character vocabularies."""
