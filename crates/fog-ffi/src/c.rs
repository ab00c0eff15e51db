//! Reading what C hands us and writing into C's buffers: every pointer checked for null, every
//! length against the buffer, every string for UTF-8. The only module that dereferences a
//! caller's pointer.

use std::ffi::{CStr, c_char, c_int};

use crate::Error;

/// A NUL-terminated UTF-8 string from C.
///
/// # Safety
///
/// `p` is null or points to a NUL-terminated string that stays valid and unchanged for `'a`.
pub(crate) unsafe fn str_in<'a>(p: *const c_char) -> Result<&'a str, Error> {
    if p.is_null() {
        return Err(Error::NullPointer);
    }
    // SAFETY: not null (checked above); NUL-terminated and valid for 'a (the caller's contract).
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map_err(|_| Error::InvalidArgument)
}

/// An optional string: null and `""` are both absent.
///
/// # Safety
///
/// As [`str_in`].
pub(crate) unsafe fn opt_str_in<'a>(p: *const c_char) -> Result<Option<&'a str>, Error> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller's contract is str_in's.
    let s = unsafe { str_in(p) }?;
    Ok((!s.is_empty()).then_some(s))
}

/// `len` bytes from C; a null pointer is allowed only with `len == 0`.
///
/// # Safety
///
/// `p` is null or points to `len` readable bytes valid for `'a`.
pub(crate) unsafe fn bytes_in<'a>(p: *const u8, len: usize) -> Result<&'a [u8], Error> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Error::NullPointer);
    }
    if len > isize::MAX as usize {
        return Err(Error::InvalidArgument);
    }
    // SAFETY: not null, len readable bytes (the caller's contract), len within isize::MAX.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// Copies `s` and a NUL into the caller's buffer of `len` bytes; the string's length (without
/// the NUL), or [`Error::BufferTooSmall`] with nothing written.
///
/// # Safety
///
/// `buf` is null or points to `len` writable bytes.
pub(crate) unsafe fn str_out(buf: *mut c_char, len: usize, s: &str) -> Result<c_int, Error> {
    if buf.is_null() {
        return Err(Error::NullPointer);
    }
    if s.len() >= len {
        return Err(Error::BufferTooSmall);
    }
    let n = c_int::try_from(s.len()).map_err(|_| Error::BufferTooSmall)?;
    // SAFETY: buf is not null and has len > s.len() writable bytes (the caller's contract and
    // the check above); s is our own string, which cannot overlap the caller's buffer.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), s.len());
        *buf.add(s.len()) = 0;
    }
    Ok(n)
}

/// Writes `value` where `out` points.
///
/// # Safety
///
/// `out` is null or points to a writable, aligned `T`.
pub(crate) unsafe fn value_out<T>(out: *mut T, value: T) -> Result<(), Error> {
    if out.is_null() {
        return Err(Error::NullPointer);
    }
    if !out.is_aligned() {
        return Err(Error::InvalidArgument);
    }
    // SAFETY: not null and aligned (checked), writable (the caller's contract).
    unsafe { out.write(value) };
    Ok(())
}
