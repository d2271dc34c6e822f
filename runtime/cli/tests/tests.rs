//! The CLI's integration tests: one binary, one module per concern, each
//! running the built `edgeclr` on real files. Run a part with a filter, e.g.
//! `cargo test --release -p edgeclr-cli --test cli -- adapt_diag::`.

mod common;

mod adapt_diag;
mod defaults;
mod resume;
