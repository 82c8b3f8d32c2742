"""Code search: two-tower encoders (NBoW, bi-RNN, 1D-CNN, self-attention), losses, MRR and an index."""
