//! libtorch's CUDA backend, loaded at start when it is there.
//!
//! Nothing in the trainer calls into `libtorch_cuda.so` directly, so the linker would drop it
//! (`--as-needed`) and libtorch would see no GPU even on one. Instead of forcing it into the
//! binary's `NEEDED` list, which would make the binary refuse to start without the CUDA
//! libraries, [`load`] opens it with `dlopen` before any tensor exists: its static initializers
//! register the CUDA hooks and kernels, exactly as linking it would. One binary then serves both
//! images: the `cuda` one (the full wheel) gets a GPU backend, the `cpu` one (the CPU libraries
//! only) runs on the CPU.

use std::ffi::{CStr, CString};
use std::sync::OnceLock;

/// The library that holds libtorch's CUDA backend.
pub const LIBRARY: &str = "libtorch_cuda.so";

/// What [`load`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The library loaded (its path as the loader resolved it).
    Loaded(String),
    /// It is not there (a CPU-only image) or would not load; the loader's reason.
    Absent(String),
}

static BACKEND: OnceLock<Backend> = OnceLock::new();

/// Opens [`LIBRARY`] once, through the loader's search path (the binary's rpath into the wheel,
/// or `LD_LIBRARY_PATH` in an image). Call it before libtorch is first used: libtorch picks its
/// CUDA hooks at the first call that asks for them.
pub fn load() -> &'static Backend {
    BACKEND.get_or_init(|| {
        let name = CString::new(LIBRARY).expect("no NUL in the name");
        // SAFETY: dlopen with a valid C string; the handle is kept for the life of the process.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if handle.is_null() {
            return Backend::Absent(dl_error());
        }
        Backend::Loaded(loaded_path(handle).unwrap_or_else(|| LIBRARY.to_string()))
    })
}

fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a C string valid until the next dl* call on this thread.
    let message = unsafe { libc::dlerror() };
    if message.is_null() {
        return "unknown loader error".into();
    }
    unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned()
}

/// The path the loader resolved for `handle`, from `dlinfo(RTLD_DI_LINKMAP)`.
fn loaded_path(handle: *mut libc::c_void) -> Option<String> {
    #[repr(C)]
    struct LinkMap {
        l_addr: usize,
        l_name: *const libc::c_char,
    }
    const RTLD_DI_LINKMAP: libc::c_int = 2;
    unsafe extern "C" {
        fn dlinfo(handle: *mut libc::c_void, request: libc::c_int, info: *mut libc::c_void) -> libc::c_int;
    }
    let mut map: *const LinkMap = std::ptr::null();
    // SAFETY: RTLD_DI_LINKMAP writes a pointer to the handle's link_map, whose first two fields
    // are the load address and the path (glibc's <link.h>).
    let rc = unsafe { dlinfo(handle, RTLD_DI_LINKMAP, (&raw mut map).cast()) };
    if rc != 0 || map.is_null() {
        return None;
    }
    let name = unsafe { (*map).l_name };
    (!name.is_null()).then(|| unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned())
}
