//! edgeclr: contrastive representation learning at the edge.
//!
//! The data flow, one module per box:
//!
//! ```text
//! images/frames ─► data (IDX, folders) ─► preprocess (manifest) ─► backend (tract | ort)
//!     ─► embed ─► store (.npy) ─► probe (linear, k-NN) / metrics (alignment, uniformity, RankMe)
//!                                  adapt::loss (contrastive objectives and their gradients)
//! ```
//!
//! Loading a model, embedding images and probing them:
//!
//! ```no_run
//! use edgeclr::data::Dataset;
//! use edgeclr::embed::{embed_dataset, EmbedOptions};
//! use edgeclr::probe::{LinearProbe, LinearProbeConfig};
//! use edgeclr::{LoadOptions, Manifest, TractEncoder};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manifest = Manifest::load("models/mobilenet_v2".as_ref())?;
//! let mut encoder = TractEncoder::load(&manifest, &LoadOptions::default())?;
//! let train = Dataset::open("data/fashion-mnist".as_ref(), Some("train"))?;
//! let emb = embed_dataset(&mut encoder, &train, &EmbedOptions::default(), |_| {})?;
//! let labels = emb.labels.as_deref().ok_or("unlabelled")?;
//! let classes = emb.class_names.clone().unwrap_or_default();
//! let (probe, _) = LinearProbe::fit(emb.embeddings.view(), labels, classes, &LinearProbeConfig::default())?;
//! println!("train accuracy {:.3}", probe.accuracy(emb.embeddings.view(), labels)?);
//! # Ok(())
//! # }
//! ```

pub mod adapt;
pub mod atomic;
pub mod augment;
pub mod backend;
pub mod capi;
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
