//! Shared pieces of the camera apps: where frames come from (`source`: V4L2,
//! folders, IDX files, synthetic), how a screen is drawn and shown
//! (`display`: embedded-graphics layouts and sinks), the common flags, the
//! frame loop with camera retry, FPS, and the heads that turn a frame into
//! labels.
//!
//! Each app (`src/bin/`) is a short `main` on top of these. They live here,
//! not in the `edgeclr` library, so that a program linking the library (Rust
//! or C) does not link a UI toolkit and a V4L2 binding it does not use.

pub mod cli;
pub mod display;
pub mod heads;
pub mod screen;
pub mod source;

pub use cli::CommonArgs;
pub use heads::{softmax, top_k, Head};
pub use screen::{FpsMeter, Screen};
