//! Ctrl-C (and SIGTERM, SIGHUP): tear the running labs down, then exit.
//!
//! [`install`] blocks the signals in the calling thread (call it first in `main`,
//! before any thread exists, so every thread inherits the mask) and starts one
//! thread that waits for them with `sigwait`. Labs register their namespace prefix
//! while they exist; on a signal, the thread removes every registered lab (killing
//! what runs inside its namespaces) and exits with 130.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The signals that end a run.
pub const HANDLED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

static LABS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Whether a signal asked the run to stop (no new lab may start then).
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

fn set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in HANDLED {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Blocks the handled signals and starts the thread that handles them.
pub fn install() {
    let set = set();
    // SAFETY: changes this thread's signal mask; threads spawned later inherit it.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    std::thread::spawn(move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: sigwait on a set blocked in every thread.
        let rc = unsafe { libc::sigwait(&set, &mut sig) };
        if rc != 0 {
            return;
        }
        STOPPING.store(true, Ordering::SeqCst);
        eprintln!("e2e: signal {sig}: removing the lab");
        teardown_all();
        // Once more, for what the main thread created meanwhile.
        std::thread::sleep(std::time::Duration::from_millis(100));
        teardown_all();
        std::process::exit(130);
    });
}

/// Called when a command is done: if a signal is being handled, waits for the
/// handler to finish removing the labs (it exits the process with 130).
pub fn finish() {
    if stopping() {
        std::thread::sleep(std::time::Duration::from_secs(30));
        std::process::exit(130);
    }
}

/// Records a lab's namespace prefix (`pal-RUNID-`) so a signal removes it.
pub fn register(prefix: &str) {
    if let Ok(mut labs) = LABS.lock() {
        labs.push(prefix.to_string());
    }
}

pub fn unregister(prefix: &str) {
    if let Ok(mut labs) = LABS.lock() {
        labs.retain(|p| p != prefix);
    }
}

/// Records a temporary directory so a signal removes it.
pub fn register_dir(dir: PathBuf) {
    if let Ok(mut dirs) = DIRS.lock() {
        dirs.push(dir);
    }
}

pub fn unregister_dir(dir: &std::path::Path) {
    if let Ok(mut dirs) = DIRS.lock() {
        dirs.retain(|d| d != dir);
    }
}

/// Removes every registered lab's namespaces.
pub fn teardown_all() {
    let prefixes: Vec<String> = LABS.lock().map(|l| l.clone()).unwrap_or_default();
    for prefix in prefixes {
        let (_, errors) = crate::netns::delete_all(&prefix);
        for e in errors {
            eprintln!("e2e: cleanup: {e:#}");
        }
    }
    let dirs: Vec<PathBuf> = DIRS.lock().map(|d| d.clone()).unwrap_or_default();
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}
