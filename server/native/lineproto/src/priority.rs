//! Thread priority of storage work: below the replay's, so the replay wins a contended core.

/// How much lower than the replay the storage threads run (a nice increment): when both want a
/// core, the replay wins, and storage catches up from its queue.
pub const STORAGE_NICE: i32 = 10;

/// Lowers the calling thread's priority by [`STORAGE_NICE`] (on Linux the nice value is a
/// per-thread attribute); best effort: a failure leaves the thread at the process's priority.
/// The pipeline thread calls it at start; Python storage threads call it through the binding.
pub fn lower_thread_priority() {
    // SAFETY: plain system calls on the calling thread.
    unsafe {
        let current = libc::getpriority(libc::PRIO_PROCESS, 0);
        libc::setpriority(libc::PRIO_PROCESS, 0, (current + STORAGE_NICE).min(19));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowers_only_the_calling_thread() {
        // SAFETY: reads the calling thread's nice value.
        let nice = || unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let before = nice();
        let inside = std::thread::spawn(move || {
            lower_thread_priority();
            nice()
        })
        .join()
        .unwrap();
        assert_eq!(inside, (before + STORAGE_NICE).min(19));
        assert_eq!(nice(), before);
    }
}
