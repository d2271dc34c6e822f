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
//! The examples below run as doc tests (`cargo test --release --doc`) on the
//! shipped MobileNetV2 and photos; paths are built from `CARGO_MANIFEST_DIR`
//! only so that they run from any directory. C programs use the same library
//! through the C ABI crate, `edgeclr-capi` (`runtime/capi/`; header
//! `runtime/capi/include/edgeclr.h`), built as `libedgeclr.so` and `libedgeclr.a`.
//!
//! # Load a model and embed an image
//!
//! A [`Manifest`] names the ONNX file, its checksum and its preprocessing; the
//! encoder runs it; [`Preprocessor`] turns decoded images into its input.
//!
//! ```
//! use edgeclr::data::{decode_image, DecodeLimits};
//! use edgeclr::embed::embed_images;
//! use edgeclr::{Encoder, LoadOptions, Manifest, Preprocessor, TractEncoder};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
//! let manifest = Manifest::load(&root.join("models/mobilenet_v2/manifest.toml"))?;
//! let mut encoder = TractEncoder::load(&manifest, &LoadOptions::default())?;
//! let preprocessor = Preprocessor::new(encoder.manifest());
//!
//! let cat = decode_image(&root.join("data/photos/chelsea.png"), DecodeLimits::default())?;
//! let out = embed_images(&mut encoder, &preprocessor, &[cat])?;
//! assert_eq!(out.embedding.dim(), (1, 1280));
//!
//! // The model's ImageNet head comes along when the manifest names one.
//! let logits = out.logits.ok_or("no logits")?;
//! let names = manifest.class_names()?.ok_or("no class names")?;
//! let top = (0..logits.ncols()).fold(0, |b, i| if logits[[0, i]] > logits[[0, b]] { i } else { b });
//! println!("chelsea.png looks like a {}", names[top]);
//! # Ok(())
//! # }
//! ```
//!
//! # Train, save and load a linear probe; enrol classes in a k-NN head
//!
//! Heads work on embedding matrices (one row per image) and persist as the
//! same JSON files the CLI's `edgeclr probe` / `edgeclr knn` verbs use.
//!
//! ```
//! use edgeclr::data::{decode_image, DecodeLimits};
//! use edgeclr::embed::embed_images;
//! use edgeclr::probe::{KnnHead, LinearProbe, LinearProbeConfig};
//! use edgeclr::{LoadOptions, Manifest, Preprocessor, TractEncoder};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
//! let manifest = Manifest::load(&root.join("models/mobilenet_v2"))?;
//! let options = LoadOptions { embedding_only: true, ..LoadOptions::default() };
//! let mut encoder = TractEncoder::load(&manifest, &options)?;
//! let preprocessor = Preprocessor::new(&manifest);
//!
//! // Four photos for training, their mirror images for testing.
//! let classes = ["astronaut", "chelsea", "coffee", "rocket"];
//! let photos = classes
//!     .iter()
//!     .map(|c| decode_image(&root.join(format!("data/photos/{c}.png")), DecodeLimits::default()))
//!     .collect::<Result<Vec<_>, _>>()?;
//! let mirrors: Vec<_> = photos.iter().map(image::imageops::flip_horizontal).collect();
//! let train = embed_images(&mut encoder, &preprocessor, &photos)?.embedding;
//! let test = embed_images(&mut encoder, &preprocessor, &mirrors)?.embedding;
//! let labels = [0, 1, 2, 3];
//! let names: Vec<String> = classes.iter().map(|c| c.to_string()).collect();
//!
//! let (probe, report) =
//!     LinearProbe::fit(train.view(), &labels, names.clone(), &LinearProbeConfig::default())?;
//! assert!(report.converged);
//! let dir = std::env::temp_dir().join(format!("edgeclr-doc-probe-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! probe.save(dir.join("probe.json"))?;
//! let probe = LinearProbe::load(dir.join("probe.json"))?;
//! assert_eq!(probe.accuracy(test.view(), &labels)?, 1.0);
//!
//! // k-NN: enrol classes one at a time, from a single shot each.
//! let mut knn = KnnHead::new(train.ncols(), 1)?;
//! for (i, name) in names.iter().enumerate() {
//!     knn.enroll(name, train.slice(ndarray::s![i..i + 1, ..]))?;
//! }
//! let predicted = knn.predict(test.view())?;
//! assert!(predicted.iter().zip(labels).all(|(p, l)| p.class == l));
//! knn.save(dir.join("head.json"))?;
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```
//!
//! # Run adaptation steps, checkpoint, export
//!
//! [`adapt::trainer::Trainer`] trains a residual adapter and a projection
//! head on frozen embeddings of two views of each image; the adapter is then
//! exported as ONNX nodes appended to the original graph, so the adapted
//! model is an ordinary model for every backend.
//!
//! ```
//! use edgeclr::adapt::export::export_adapted;
//! use edgeclr::adapt::config::AdaptConfig;
//! use edgeclr::adapt::trainer::Trainer;
//! use edgeclr::augment::{AugmentConfig, Augmenter};
//! use edgeclr::data::{decode_image, DecodeLimits};
//! use edgeclr::embed::embed_images;
//! use edgeclr::{LoadOptions, Manifest, Preprocessor, TractEncoder};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
//! let manifest = Manifest::load(&root.join("models/mobilenet_v2"))?;
//! let options = LoadOptions { embedding_only: true, ..LoadOptions::default() };
//! let mut encoder = TractEncoder::load(&manifest, &options)?;
//! let preprocessor = Preprocessor::new(&manifest);
//!
//! // Two seeded augmented views of each photo, through the frozen encoder.
//! let photos = ["astronaut", "chelsea", "coffee", "rocket"]
//!     .iter()
//!     .map(|c| decode_image(&root.join(format!("data/photos/{c}.png")), DecodeLimits::default()))
//!     .collect::<Result<Vec<_>, _>>()?;
//! let mut augmenter = Augmenter::new(AugmentConfig::default(), 7)?;
//! let view1: Vec<_> = photos.iter().map(|p| augmenter.view(p)).collect();
//! let view2: Vec<_> = photos.iter().map(|p| augmenter.view(p)).collect();
//! let x1 = embed_images(&mut encoder, &preprocessor, &view1)?.embedding;
//! let x2 = embed_images(&mut encoder, &preprocessor, &view2)?.embedding;
//!
//! let config = AdaptConfig { batch_size: 4, bank_size: 0, warmup_epochs: 0, ..AdaptConfig::default() };
//! let mut trainer = Trainer::new(config.clone(), manifest.outputs.embedding_dim, 1)?;
//! let first = trainer.train_step(x1.view(), x2.view())?;
//! let second = trainer.train_step(x1.view(), x2.view())?;
//! assert!(second.loss < first.loss);
//! let adapted = trainer.adapt(x1.view())?; // what probes and k-NN heads use
//!
//! let dir = std::env::temp_dir().join(format!("edgeclr-doc-adapt-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! trainer.checkpoint(&manifest, &config, 0)?.save(&dir.join("checkpoint.safetensors"))?;
//! let exported = export_adapted(
//!     &manifest,
//!     &trainer.params.with_prefix("adapter."),
//!     &dir.join("model"),
//!     "mobilenet_v2-adapted",
//! )?;
//! // The exported model computes the adapted embedding itself.
//! let mut adapted_encoder = TractEncoder::load(&exported, &options)?;
//! let direct = embed_images(&mut adapted_encoder, &preprocessor, &view1)?.embedding;
//! assert!((&direct - &adapted).iter().all(|d| d.abs() < 1e-3));
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```

pub mod adapt;
pub mod atomic;
pub mod augment;
pub mod backend;
pub mod blocks;
pub mod data;
pub mod embed;
pub mod error;
pub mod inspect;
pub mod manifest;
pub mod metrics;
pub mod model_init;
pub mod onnx;
pub mod plot;
pub mod preprocess;
pub mod probe;
pub mod rss;
pub mod store;

/// The source tree this crate was built from (`.cargo/config.toml` sets it).
/// Read only so that rustc records it as a dependency: when a shared build
/// cache (`ci/target-cache`) last built another clone, the value differs and
/// cargo rebuilds this crate instead of reusing the other clone's artefact.
#[doc(hidden)]
pub const SOURCE_TREE: Option<&str> = option_env!("EDGECLR_SOURCE_TREE");

pub use backend::{Encoder, EncoderOutput, LoadOptions, ModelError, TractEncoder};
pub use error::{Error, Result};
pub use manifest::Manifest;
pub use preprocess::Preprocessor;
