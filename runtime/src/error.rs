//! The crate-wide error: each module has its own error type, and this enum
//! gathers them so callers can use `?` across modules and still match on the
//! kind of failure.

/// Any error edgeclr's library returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    #[error(transparent)]
    Model(#[from] crate::backend::ModelError),
    #[error(transparent)]
    Preprocess(#[from] crate::preprocess::PreprocessError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Probe(#[from] crate::probe::ProbeError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error(transparent)]
    Augment(#[from] crate::augment::AugmentError),
    #[error(transparent)]
    Train(#[from] crate::adapt::trainer::TrainError),
    #[error(transparent)]
    Checkpoint(#[from] crate::adapt::checkpoint::CheckpointError),
    #[error(transparent)]
    Export(#[from] crate::adapt::export::ExportError),
    #[error(transparent)]
    Resume(#[from] crate::adapt::resume::ResumeError),
    #[error(transparent)]
    Views(#[from] crate::adapt::views::ViewError),
    #[error(transparent)]
    Session(#[from] crate::adapt::session::SessionError),
}

/// `Result` with edgeclr's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
