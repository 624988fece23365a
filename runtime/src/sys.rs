//! The one system call the sidecar makes that std does not wrap, and so the workspace's only
//! `unsafe` code: lowering the calling thread's scheduling priority.

/// Lowers the calling thread's priority to `nice` (0 is the default, 19 the lowest), so that
/// on a busy CPU the scheduler runs the threads that serve requests first. Linux gives each
/// thread its own nice value; elsewhere this does nothing.
#[cfg(target_os = "linux")]
pub(crate) fn lower_thread_priority(nice: i32) -> std::io::Result<()> {
    // SAFETY: gettid and setpriority take plain integers, touch no memory of ours and
    // report failure through their return value and errno.
    #[allow(unsafe_code)]
    let result = unsafe {
        let thread = libc::syscall(libc::SYS_gettid);
        match libc::id_t::try_from(thread) {
            Ok(thread) => libc::setpriority(libc::PRIO_PROCESS, thread, nice),
            Err(_) => -1,
        }
    };
    if result == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Lowers the calling thread's priority (nothing to do on this system).
#[cfg(not(target_os = "linux"))]
pub(crate) fn lower_thread_priority(_nice: i32) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_lowers_its_own_priority_and_no_other() {
        fn nice_of(thread: &str) -> i64 {
            // Field 19 of /proc/self/task/TID/stat, counted after the command's closing
            // parenthesis.
            let stat = std::fs::read_to_string(format!("/proc/self/task/{thread}/stat")).expect("the thread's stat");
            let after = &stat[stat.rfind(')').expect("a command") + 2..];
            after.split(' ').nth(16).and_then(|it| it.parse().ok()).expect("a nice value")
        }
        fn this_thread() -> String {
            let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
            link.file_name().expect("a thread id").to_string_lossy().into_owned()
        }
        let main = this_thread();
        let before = nice_of(&main);
        let lowered = std::thread::spawn(move || {
            super::lower_thread_priority(10).expect("raising a nice value needs no privilege");
            nice_of(&this_thread())
        })
        .join()
        .expect("the thread");
        assert_eq!(lowered, (before + 10).min(19));
        assert_eq!(nice_of(&main), before);
    }
}
