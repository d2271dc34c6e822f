//! Turning raw C arguments into Rust values, with every check that can be made
//! without trusting the caller: NULL, UTF-8, alignment, sizes that overflow.
//!
//! What cannot be checked — that a non-NULL pointer really points to as many
//! readable (or writable) elements as the length argument says — is the
//! caller's side of the contract, stated on each function.

use std::ffi::{c_char, CStr};

use super::status::{EdgeclrStatus, FfiError};

fn null(what: &str) -> FfiError {
    FfiError::new(EdgeclrStatus::NullPointer, format!("{what} is NULL"))
}

/// Rejects NULL and misaligned pointers and lengths whose byte size overflows
/// `isize` (what `slice::from_raw_parts` requires).
fn check_buffer<T>(ptr: *const T, len: usize, what: &str) -> Result<(), FfiError> {
    if ptr.is_null() {
        return Err(null(what));
    }
    if !ptr.is_aligned() {
        return Err(FfiError::new(
            EdgeclrStatus::InvalidArgument,
            format!(
                "{what} is not aligned to {} bytes",
                std::mem::align_of::<T>()
            ),
        ));
    }
    if len
        .checked_mul(std::mem::size_of::<T>())
        .is_none_or(|bytes| bytes > isize::MAX as usize)
    {
        return Err(FfiError::new(
            EdgeclrStatus::BufferSize,
            format!("{what}: length {len} is too large"),
        ));
    }
    Ok(())
}

/// A NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that stays valid and
/// unmodified for `'a`.
pub(crate) unsafe fn str_arg<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, FfiError> {
    if ptr.is_null() {
        return Err(null(what));
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    let text = unsafe { CStr::from_ptr(ptr) };
    text.to_str().map_err(|e| {
        FfiError::new(
            EdgeclrStatus::InvalidArgument,
            format!("{what} is not valid UTF-8 ({e}); edgeclr takes UTF-8 paths and names"),
        )
    })
}

/// An optional string argument: NULL gives `None`.
///
/// # Safety
/// As [`str_arg`].
pub(crate) unsafe fn opt_str_arg<'a>(
    ptr: *const c_char,
    what: &str,
) -> Result<Option<&'a str>, FfiError> {
    if ptr.is_null() {
        Ok(None)
    } else {
        // SAFETY: forwarded contract.
        unsafe { str_arg(ptr, what) }.map(Some)
    }
}

/// A read-only buffer of `len` elements.
///
/// # Safety
/// `ptr` is NULL or points to `len` initialised elements valid for `'a`.
pub(crate) unsafe fn slice_arg<'a, T>(
    ptr: *const T,
    len: usize,
    what: &str,
) -> Result<&'a [T], FfiError> {
    check_buffer(ptr, len, what)?;
    // SAFETY: checked non-NULL, aligned, size in range; extent per contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// A writable buffer of `len` elements.
///
/// # Safety
/// `ptr` is NULL or points to `len` writable elements, valid for `'a` and
/// not aliased by any other argument.
pub(crate) unsafe fn slice_mut_arg<'a, T>(
    ptr: *mut T,
    len: usize,
    what: &str,
) -> Result<&'a mut [T], FfiError> {
    check_buffer(ptr.cast_const(), len, what)?;
    // SAFETY: checked non-NULL, aligned, size in range; extent per contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// A required out-parameter.
///
/// # Safety
/// `ptr` is NULL or points to a writable `T`.
pub(crate) unsafe fn out_arg<'a, T>(ptr: *mut T, what: &str) -> Result<&'a mut T, FfiError> {
    check_buffer(ptr.cast_const(), 1, what)?;
    // SAFETY: checked non-NULL and aligned; writable per contract.
    Ok(unsafe { &mut *ptr })
}

/// An optional out-parameter: NULL gives `None`.
///
/// # Safety
/// As [`out_arg`].
pub(crate) unsafe fn opt_out_arg<'a, T>(
    ptr: *mut T,
    what: &str,
) -> Result<Option<&'a mut T>, FfiError> {
    if ptr.is_null() {
        Ok(None)
    } else {
        // SAFETY: forwarded contract.
        unsafe { out_arg(ptr, what) }.map(Some)
    }
}

/// `rows * cols`, or an error naming the buffer when it overflows or is 0.
pub(crate) fn matrix_len(rows: usize, cols: usize, what: &str) -> Result<usize, FfiError> {
    match rows.checked_mul(cols) {
        Some(0) => Err(FfiError::new(
            EdgeclrStatus::InvalidArgument,
            format!("{what} is empty ({rows} x {cols})"),
        )),
        Some(n) => Ok(n),
        None => Err(FfiError::new(
            EdgeclrStatus::BufferSize,
            format!("{what}: {rows} x {cols} overflows"),
        )),
    }
}

/// Fails with `EDGECLR_STATUS_BUFFER_SIZE` unless `got == expected`.
pub(crate) fn expect_len(what: &str, got: usize, expected: usize) -> Result<(), FfiError> {
    if got == expected {
        Ok(())
    } else {
        Err(FfiError::new(
            EdgeclrStatus::BufferSize,
            format!("{what} has {got} elements, expected {expected}"),
        ))
    }
}

/// Copies `text` NUL-terminated into `buf` (`buf_len` bytes), reporting the
/// bytes needed (NUL included) through `needed` when it is not NULL. `buf`
/// may be NULL when `buf_len` is 0, to ask for the size.
///
/// # Safety
/// `buf` is NULL or points to `buf_len` writable bytes; `needed` is NULL or
/// points to a writable `usize`.
pub(crate) unsafe fn copy_string_out(
    text: &str,
    buf: *mut c_char,
    buf_len: usize,
    needed: *mut usize,
) -> Result<(), FfiError> {
    let size = text.len() + 1;
    // SAFETY: forwarded contract.
    if let Some(needed) = unsafe { opt_out_arg(needed, "needed") }? {
        *needed = size;
    }
    if buf_len < size {
        return Err(FfiError::new(
            EdgeclrStatus::BufferSize,
            format!("the buffer holds {buf_len} bytes, the name needs {size} (NUL included)"),
        ));
    }
    // SAFETY: forwarded contract; buf_len >= size > 0.
    let out = unsafe { slice_mut_arg(buf.cast::<u8>(), buf_len, "buf") }?;
    out[..text.len()].copy_from_slice(text.as_bytes());
    out[text.len()] = 0;
    Ok(())
}
