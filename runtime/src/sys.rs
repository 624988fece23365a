//! How the sidecar's background threads (the xDS client's) stay out of the way of the
//! threads that serve requests: lowering a thread's scheduling priority (the one system call
//! std does not wrap, and so the workspace's only `unsafe` code), and giving way mid-work.

/// Lowers the calling thread's priority by `steps` nice levels (to 19 at most), so that on a
/// busy CPU the scheduler runs the threads that serve requests first. It never raises a
/// priority: a sidecar started at nice 15 runs the thread at 19, and one started with the
/// privilege to raise priorities does not use it. Linux gives each thread its own nice
/// value (`who` 0 is the calling thread); elsewhere this does nothing.
#[cfg(target_os = "linux")]
pub(crate) fn lower_thread_priority(steps: i32) -> std::io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: getpriority and setpriority take plain integers, touch no memory of ours and
    // report failure through errno, which is this thread's own and is cleared first because
    // -1 is also a valid nice value.
    let current = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, 0)
    };
    if current == -1 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error().is_some_and(|it| it != 0) {
            return Err(err);
        }
    }
    let wanted = current.saturating_add(steps).min(19);
    if wanted <= current {
        return Ok(());
    }
    #[allow(unsafe_code)]
    // SAFETY: as above.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, wanted) };
    if result == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Lowers the calling thread's priority (nothing to do on this system).
#[cfg(not(target_os = "linux"))]
pub(crate) fn lower_thread_priority(_steps: i32) -> std::io::Result<()> {
    Ok(())
}

/// Lets runnable threads of this CPU go first; the xDS client calls it in the middle of a
/// large update. A lower priority is not enough: Linux's scheduler (EEVDF) keeps what a
/// thread was owed when it went to sleep, so the client, back from its wait for Pilot, may
/// run for up to a scheduler tick (4 ms on the 250 Hz kernel here) before a request thread
/// that became runnable behind it, whatever its nice value or policy (`SCHED_IDLE` did the
/// same). A request arriving while a 10,000-endpoint assignment was applied waited 2 to 5
/// ms (`bench/xds/run`). A yield gives up that credit; where nothing else waits, it costs a
/// system call.
pub(crate) fn give_way() {
    std::thread::yield_now();
}

/// [`give_way`] once every `per_turn` items of a loop, `done` being the items done so far.
pub(crate) fn give_way_every(per_turn: usize, done: usize) {
    if done % per_turn == per_turn - 1 {
        give_way();
    }
}

/// Drops `items` [`give_way`]ing every `per_turn` of them: a list of 10,000 endpoints takes
/// about 100 µs to drop, as long as a request should wait behind it.
pub(crate) fn drop_in_turns<T>(items: Vec<T>, per_turn: usize) {
    let mut items = items.into_iter();
    while items.len() > 0 {
        items.by_ref().take(per_turn.max(1)).for_each(drop);
        give_way();
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_lowers_its_own_priority_and_no_other() {
        /// The nice value of the calling thread: field 19 of its stat, counted after the
        /// command's closing parenthesis.
        fn own_nice() -> i64 {
            let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("the thread's stat");
            let after = &stat[stat.rfind(')').expect("a command") + 2..];
            after.split(' ').nth(16).and_then(|it| it.parse().ok()).expect("a nice value")
        }
        let before = own_nice();
        let lowered = std::thread::spawn(|| {
            super::lower_thread_priority(10).expect("lowering a priority needs no privilege");
            let once = own_nice();
            // Lowering again goes further down, to 19 at most.
            super::lower_thread_priority(10).expect("lowering a priority needs no privilege");
            (once, own_nice())
        })
        .join()
        .expect("the thread");
        assert_eq!(lowered, ((before + 10).min(19), (before + 20).min(19)));
        assert_eq!(own_nice(), before, "the calling thread's priority changed");
    }
}
