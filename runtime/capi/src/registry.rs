//! The process-wide table behind every C handle.
//!
//! A handle is a 64-bit id drawn from a counter that never repeats (2^64 ids
//! cannot run out), never a pointer: C code cannot forge a dangling pointer
//! into edgeclr's memory, and an id that was freed, never issued, or belongs
//! to another kind of object is looked up, not found, and rejected with
//! `EDGECLR_STATUS_INVALID_HANDLE` — every time, not "usually".
//!
//! Each object sits behind its own mutex, taken with `try_lock`: a second
//! thread calling in while a call on the same handle is running gets
//! `EDGECLR_STATUS_BUSY` at once. Freeing a handle that another thread is
//! using removes it from the table; the running call keeps the object alive
//! (it holds an `Arc`) and it is dropped when that call returns.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, TryLockError};

use super::status::{EdgeclrStatus, FfiError};

type Slot = Arc<Mutex<Box<dyn Any + Send>>>;

struct Entry {
    kind: &'static str,
    object: Slot,
}

#[derive(Default)]
struct Registry {
    /// The last id handed out; 0 is the null handle and never issued.
    last_id: u64,
    /// A B-tree rather than a hash map: its nodes are referenced from their
    /// start, so memory checkers see a live table as reachable (hashbrown's
    /// interior pointer shows up as "possibly lost" under valgrind).
    live: BTreeMap<u64, Entry>,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Mutex::default);

/// The table itself. No code panics while holding this lock (only map
/// operations run under it), so a poisoned lock still holds a consistent map.
fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Stores `value` and returns its new handle id (never 0, never reused).
pub(crate) fn insert<T: Any + Send>(kind: &'static str, value: T) -> u64 {
    let mut reg = registry();
    reg.last_id += 1;
    let id = reg.last_id;
    let object: Slot = Arc::new(Mutex::new(Box::new(value)));
    reg.live.insert(id, Entry { kind, object });
    id
}

/// The live entry of `kind` with `id`, or the error a C caller gets.
fn find<'a>(reg: &'a Registry, id: u64, kind: &'static str) -> Result<&'a Entry, FfiError> {
    if id == 0 {
        return Err(FfiError::new(
            EdgeclrStatus::NullHandle,
            format!("the {kind} handle is null (id 0)"),
        ));
    }
    match reg.live.get(&id) {
        Some(entry) if entry.kind == kind => Ok(entry),
        Some(entry) => Err(FfiError::new(
            EdgeclrStatus::InvalidHandle,
            format!("handle {id} is a {}, not a {kind}", entry.kind),
        )),
        None if id <= reg.last_id => Err(FfiError::new(
            EdgeclrStatus::InvalidHandle,
            format!("{kind} handle {id} was already freed"),
        )),
        None => Err(FfiError::new(
            EdgeclrStatus::InvalidHandle,
            format!("{kind} handle {id} was never issued by edgeclr"),
        )),
    }
}

/// The live object of `kind` with `id`.
fn lookup(id: u64, kind: &'static str) -> Result<Slot, FfiError> {
    find(&registry(), id, kind).map(|entry| Arc::clone(&entry.object))
}

/// Runs `f` on the object of `kind` with `id`, holding its lock for the call.
pub(crate) fn with<T: Any + Send, R>(
    id: u64,
    kind: &'static str,
    f: impl FnOnce(&mut T) -> Result<R, FfiError>,
) -> Result<R, FfiError> {
    let slot = lookup(id, kind)?;
    let mut guard = match slot.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::WouldBlock) => {
            return Err(FfiError::new(
                EdgeclrStatus::Busy,
                format!(
                    "{kind} handle {id} is in use by a call on another thread; \
                     a handle serves one call at a time"
                ),
            ))
        }
        Err(TryLockError::Poisoned(_)) => {
            return Err(FfiError::new(
                EdgeclrStatus::Internal,
                format!(
                    "{kind} handle {id} is unusable after an internal error in an \
                     earlier call; free it"
                ),
            ))
        }
    };
    let object = guard.downcast_mut::<T>().ok_or_else(|| {
        FfiError::new(
            EdgeclrStatus::Internal,
            format!("{kind} handle {id} holds an object of the wrong type"),
        )
    })?;
    f(object)
}

/// Removes the handle; the object is dropped now, or when a call still
/// running on it on another thread returns.
pub(crate) fn remove(id: u64, kind: &'static str) -> Result<(), FfiError> {
    let removed = {
        // Checked and removed under one lock, so of two concurrent frees of
        // one handle exactly one succeeds.
        let mut reg = registry();
        find(&reg, id, kind)?;
        reg.live.remove(&id)
    };
    // Dropped outside the table's lock: dropping a model can take a while.
    drop(removed);
    Ok(())
}

#[cfg(test)]
/// Holds the object's lock, as a call on another thread would.
pub(crate) fn hold<R>(id: u64, kind: &'static str, f: impl FnOnce() -> R) -> R {
    let slot = lookup(id, kind).expect("live handle");
    let _guard = slot.lock().expect("not poisoned");
    f()
}
