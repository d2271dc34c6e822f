//! Shared pieces of the camera apps: the common flags, the frame loop with
//! camera retry, FPS, the screen, and the heads that turn a frame into labels.
//!
//! Each app (`src/bin/`) is a short `main` on top of these.

pub mod cli;
pub mod heads;
pub mod screen;

pub use cli::CommonArgs;
pub use heads::{softmax, top_k, Head};
pub use screen::{FpsMeter, Screen};
