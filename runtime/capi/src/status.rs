//! Status codes, the thread-local last-error message, and the wrapper every
//! exported function runs its body in (panics never cross the FFI boundary).

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What every `edgeclr_*` function that can fail returns. `EDGECLR_STATUS_OK`
/// is 0; every other value is a failure whose message
/// [`edgeclr_last_error`] then holds. Values are stable across releases.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeclrStatus {
    /// Success.
    Ok = 0,
    /// A required pointer argument (string, buffer, out-parameter) was NULL.
    NullPointer = 1,
    /// A handle argument was the null handle (`id == 0`).
    NullHandle = 2,
    /// A handle that was never issued, was already freed, or is of another
    /// kind (e.g. a k-NN head passed where a model is expected).
    InvalidHandle = 3,
    /// A buffer length does not match what the call needs (the message says
    /// what was expected).
    BufferSize = 4,
    /// An argument value is invalid: a string that is not UTF-8, a zero or
    /// overflowing size, a misaligned float buffer, a bad configuration.
    InvalidArgument = 5,
    /// The handle is being used by a call on another thread right now. A
    /// handle serves one call at a time; edgeclr rejects the second call
    /// instead of blocking or racing.
    Busy = 6,
    /// Reading or writing a file failed.
    Io = 7,
    /// Loading or running the model failed (manifest, ONNX, backend).
    Model = 8,
    /// A probe or k-NN head rejected the input or its file (dimension
    /// mismatch, unknown class, empty head, corrupt file).
    Probe = 9,
    /// An adaptation step failed (bad configuration, non-finite loss or gradient).
    Train = 10,
    /// A checkpoint could not be read, written, or does not match the model.
    Checkpoint = 11,
    /// An internal error (a bug): a panic was caught at the boundary, or the
    /// handle was left unusable by an earlier one. Free the handle.
    Internal = 12,
}

impl EdgeclrStatus {
    /// The constant's C name, for messages.
    fn name(self) -> &'static CStr {
        match self {
            Self::Ok => c"EDGECLR_STATUS_OK",
            Self::NullPointer => c"EDGECLR_STATUS_NULL_POINTER",
            Self::NullHandle => c"EDGECLR_STATUS_NULL_HANDLE",
            Self::InvalidHandle => c"EDGECLR_STATUS_INVALID_HANDLE",
            Self::BufferSize => c"EDGECLR_STATUS_BUFFER_SIZE",
            Self::InvalidArgument => c"EDGECLR_STATUS_INVALID_ARGUMENT",
            Self::Busy => c"EDGECLR_STATUS_BUSY",
            Self::Io => c"EDGECLR_STATUS_IO",
            Self::Model => c"EDGECLR_STATUS_MODEL",
            Self::Probe => c"EDGECLR_STATUS_PROBE",
            Self::Train => c"EDGECLR_STATUS_TRAIN",
            Self::Checkpoint => c"EDGECLR_STATUS_CHECKPOINT",
            Self::Internal => c"EDGECLR_STATUS_INTERNAL",
        }
    }

    const ALL: [Self; 13] = [
        Self::Ok,
        Self::NullPointer,
        Self::NullHandle,
        Self::InvalidHandle,
        Self::BufferSize,
        Self::InvalidArgument,
        Self::Busy,
        Self::Io,
        Self::Model,
        Self::Probe,
        Self::Train,
        Self::Checkpoint,
        Self::Internal,
    ];
}

/// A failed call: the code returned to C and the message kept for
/// [`edgeclr_last_error`].
#[derive(Debug)]
pub(crate) struct FfiError {
    pub status: EdgeclrStatus,
    pub message: String,
}

impl FfiError {
    pub fn new(status: EdgeclrStatus, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// Maps each library error to the status a C caller can branch on; the
/// message keeps the library's full explanation.
impl From<edgeclr::Error> for FfiError {
    fn from(e: edgeclr::Error) -> Self {
        use edgeclr::Error as E;
        let status = match &e {
            E::Manifest(_) | E::Model(_) | E::Preprocess(_) | E::Export(_) => EdgeclrStatus::Model,
            E::Data(_) | E::Store(_) => EdgeclrStatus::Io,
            E::Probe(p) => return p_status(p, e.to_string()),
            E::Metrics(_) | E::Augment(_) | E::Train(_) | E::Views(_) => EdgeclrStatus::Train,
            E::Checkpoint(edgeclr::adapt::checkpoint::CheckpointError::Io { .. }) => {
                EdgeclrStatus::Io
            }
            E::Checkpoint(_) => EdgeclrStatus::Checkpoint,
            E::Resume(edgeclr::adapt::resume::ResumeError::Checkpoint(
                edgeclr::adapt::checkpoint::CheckpointError::Io { .. },
            )) => EdgeclrStatus::Io,
            E::Resume(_) => EdgeclrStatus::Checkpoint,
            E::Session(edgeclr::adapt::session::SessionError::Io { .. }) => EdgeclrStatus::Io,
            E::Session(_) => EdgeclrStatus::Train,
        };
        Self::new(status, e.to_string())
    }
}

fn p_status(p: &edgeclr::probe::ProbeError, message: String) -> FfiError {
    use edgeclr::probe::ProbeError as P;
    let status = match p {
        P::Io { .. } => EdgeclrStatus::Io,
        P::DimMismatch { .. } => EdgeclrStatus::BufferSize,
        _ => EdgeclrStatus::Probe,
    };
    FfiError::new(status, message)
}

/// Lets `?` convert every module error through [`edgeclr::Error`].
macro_rules! via_crate_error {
    ($($t:ty),*) => {$(
        impl From<$t> for FfiError {
            fn from(e: $t) -> Self {
                edgeclr::Error::from(e).into()
            }
        }
    )*};
}
via_crate_error!(
    edgeclr::manifest::ManifestError,
    edgeclr::backend::ModelError,
    edgeclr::preprocess::PreprocessError,
    edgeclr::probe::ProbeError,
    edgeclr::adapt::trainer::TrainError,
    edgeclr::adapt::checkpoint::CheckpointError,
    edgeclr::adapt::resume::ResumeError
);

thread_local! {
    /// The message of the last failed call on this thread.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Stores `message` as this thread's last error (NUL bytes become spaces, so
/// the message is never lost to a `CString` error).
fn set_last_error(message: &str) {
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    // `try_with` fails only while the thread is being torn down; then there is
    // nobody left to read the message.
    let _ = LAST_ERROR.try_with(|slot| {
        if let Ok(mut slot) = slot.try_borrow_mut() {
            *slot = text;
        }
    });
}

/// Runs an exported function's body: `Ok` becomes `EDGECLR_STATUS_OK`, an
/// error becomes its status with its message stored for
/// [`edgeclr_last_error`], and a panic becomes `EDGECLR_STATUS_INTERNAL`
/// instead of unwinding into C (which would be undefined behaviour).
pub(crate) fn guard(body: impl FnOnce() -> Result<(), FfiError>) -> EdgeclrStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => EdgeclrStatus::Ok,
        Ok(Err(e)) => {
            set_last_error(&e.message);
            e.status
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("internal error in edgeclr (a bug): {what}"));
            EdgeclrStatus::Internal
        }
    }
}

/// The message of the most recent failed `edgeclr_*` call on the calling
/// thread ("" if none has failed yet). Never NULL. Successful calls leave it
/// unchanged.
///
/// The string belongs to edgeclr: it stays valid until the next failing call
/// on the same thread or the thread's exit. Copy it to keep it longer. Each
/// thread has its own message, so threads never see each other's errors.
#[no_mangle]
pub extern "C" fn edgeclr_last_error() -> *const c_char {
    let ptr = catch_unwind(|| {
        LAST_ERROR
            .try_with(|slot| slot.try_borrow().map(|s| s.as_ptr()).ok())
            .ok()
            .flatten()
    });
    match ptr {
        Ok(Some(p)) => p,
        _ => c"".as_ptr(),
    }
}

/// The C name of a status value (`"EDGECLR_STATUS_BUSY"`), or
/// `"EDGECLR_STATUS_UNKNOWN"` for a value that is not a status. Never NULL;
/// the string is static.
#[no_mangle]
pub extern "C" fn edgeclr_status_name(status: i32) -> *const c_char {
    EdgeclrStatus::ALL
        .iter()
        .find(|s| **s as i32 == status)
        .map_or(c"EDGECLR_STATUS_UNKNOWN".as_ptr(), |s| s.name().as_ptr())
}

/// This library's version (`"0.1.0"`), a static string. Never NULL.
#[no_mangle]
pub extern "C" fn edgeclr_version() -> *const c_char {
    const VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => c"unknown",
        };
    VERSION.as_ptr()
}

#[cfg(test)]
pub(crate) fn last_error_string() -> String {
    // SAFETY: edgeclr_last_error returns a valid NUL-terminated string.
    unsafe { CStr::from_ptr(edgeclr_last_error()) }
        .to_string_lossy()
        .into_owned()
}
