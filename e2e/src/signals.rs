//! Ctrl-C (and SIGTERM, SIGHUP): tear the running labs down, then exit.
//!
//! [`install`] blocks the signals in the calling thread (call it first in `main`,
//! before any thread exists, so every thread inherits the mask) and starts one
//! thread that waits for them with `sigwait`. Labs register their namespace prefix
//! while they exist; on a signal, the thread removes every registered lab (killing
//! what runs inside its namespaces) and exits with 130.

use std::sync::Mutex;

/// The signals that end a run.
pub const HANDLED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

static LABS: Mutex<Vec<String>> = Mutex::new(Vec::new());

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
        eprintln!("e2e: signal {sig}: removing the lab");
        teardown_all();
        std::process::exit(130);
    });
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

/// Removes every registered lab's namespaces.
pub fn teardown_all() {
    let prefixes: Vec<String> = LABS.lock().map(|l| l.clone()).unwrap_or_default();
    for prefix in prefixes {
        let (_, errors) = crate::netns::delete_all(&prefix);
        for e in errors {
            eprintln!("e2e: cleanup: {e:#}");
        }
    }
}
