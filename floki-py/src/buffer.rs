//! Any Python object with the buffer protocol (bytes, bytearray,
//! memoryview, array, a NumPy array) as bytes in place: no copy in Python.
//!
//! PyO3 offers the buffer protocol only where the limited API has it
//! (CPython 3.11+), and our wheel is abi3 from 3.9. `PyObject_GetBuffer`,
//! `PyBuffer_Release` and `Py_buffer` are part of every CPython 3 (and of the
//! stable ABI since 3.11, unchanged), so they are declared here. The tests run
//! the same wheel on 3.9 and on the newest CPython.

use std::{
    ffi::{c_char, c_int, c_void},
    ptr,
};

use pyo3::{Bound, PyAny, PyResult, Python, ffi};

/// CPython's `Py_buffer`.
#[repr(C)]
struct PyBuffer {
    buf: *mut c_void,
    obj: *mut ffi::PyObject,
    len: ffi::Py_ssize_t,
    itemsize: ffi::Py_ssize_t,
    readonly: c_int,
    ndim: c_int,
    format: *mut c_char,
    shape: *mut ffi::Py_ssize_t,
    strides: *mut ffi::Py_ssize_t,
    suboffsets: *mut ffi::Py_ssize_t,
    internal: *mut c_void,
}

/// A contiguous buffer of bytes, no format, no shape.
const PYBUF_SIMPLE: c_int = 0;
/// ... that the caller may write.
const PYBUF_WRITABLE: c_int = 0x0001;

unsafe extern "C" {
    fn PyObject_GetBuffer(obj: *mut ffi::PyObject, view: *mut PyBuffer, flags: c_int) -> c_int;
    fn PyBuffer_Release(view: *mut PyBuffer);
}

/// An exported buffer: the object cannot move or resize its memory until
/// this is dropped (which needs the GIL, as Python objects do).
pub struct Exported {
    view: Box<PyBuffer>,
}

// SAFETY: the exported memory stays valid and in place until `PyBuffer_Release`,
// whichever thread uses it; the release itself happens with the GIL held
// (`Drop` attaches).
unsafe impl Send for Exported {}

impl Exported {
    /// The bytes of `object`, to read.
    pub fn readable(object: &Bound<'_, PyAny>) -> PyResult<Self> {
        Self::get(object, PYBUF_SIMPLE)
    }

    /// The bytes of `object`, to write into.
    pub fn writable(object: &Bound<'_, PyAny>) -> PyResult<Self> {
        Self::get(object, PYBUF_WRITABLE)
    }

    fn get(object: &Bound<'_, PyAny>, flags: c_int) -> PyResult<Self> {
        let mut view = Box::new(PyBuffer {
            buf: ptr::null_mut(),
            obj: ptr::null_mut(),
            len: 0,
            itemsize: 0,
            readonly: 0,
            ndim: 0,
            format: ptr::null_mut(),
            shape: ptr::null_mut(),
            strides: ptr::null_mut(),
            suboffsets: ptr::null_mut(),
            internal: ptr::null_mut(),
        });
        // SAFETY: a live object (the GIL is held: we have a `Bound`) and a
        // zeroed `Py_buffer` for the exporter to fill.
        let rc = unsafe { PyObject_GetBuffer(object.as_ptr(), &raw mut *view, flags) };
        if rc != 0 {
            return Err(pyo3::PyErr::fetch(object.py()));
        }
        Ok(Self { view })
    }

    /// The bytes, to read (valid while `self` lives).
    pub fn bytes(&self) -> &[u8] {
        if self.view.len == 0 {
            return &[];
        }
        // SAFETY: the exporter keeps `len` contiguous bytes at `buf` until
        // the buffer is released (PyBUF_SIMPLE asks for contiguous memory).
        unsafe { std::slice::from_raw_parts(self.view.buf.cast(), self.view.len as usize) }
    }

    /// The bytes, to write (exported writable; valid while `self` lives).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        if self.view.len == 0 {
            return &mut [];
        }
        // SAFETY: as in `bytes`, and the exporter granted PyBUF_WRITABLE.
        unsafe { std::slice::from_raw_parts_mut(self.view.buf.cast(), self.view.len as usize) }
    }
}

impl Drop for Exported {
    fn drop(&mut self) {
        Python::attach(|_| {
            // SAFETY: a buffer `PyObject_GetBuffer` filled, released once,
            // with the GIL held.
            unsafe { PyBuffer_Release(&raw mut *self.view) };
        });
    }
}
