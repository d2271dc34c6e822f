//! edgeclr: contrastive representation learning at the edge.
//!
//! The data flow, one module per box:
//!
//! ```text
//! images/frames ─► data (IDX, folders) ─► preprocess (manifest) ─► backend (tract)
//!     ─► embed ─► probe (linear, k-NN) / metrics (alignment, uniformity, RankMe)
//! ```

pub mod adapt;
pub mod backend;
pub mod data;
pub mod embed;
pub mod error;
pub mod inspect;
pub mod manifest;
pub mod metrics;
pub mod preprocess;
pub mod probe;
pub mod store;

pub use backend::{Encoder, EncoderOutput, LoadOptions, ModelError, TractEncoder};
pub use error::{Error, Result};
pub use manifest::Manifest;
pub use preprocess::Preprocessor;
