//! Engine ops against tract and finite differences (being written).
