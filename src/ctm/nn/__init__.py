"""The network: the CTM as the paper writes it (`model`), its option families (backbones, positional
embeddings, synapses), how a tick reads its input (`readers`), the LSTM baseline, model kinds, adaptive
halting, and the fast engine with its C++ tick loops."""
