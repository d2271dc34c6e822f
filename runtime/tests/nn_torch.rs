//! The engine against PyTorch autograd (being written).
