//! Watching the mesh directory and the registration API: the file system reports changes
//! below the directory (inotify on Linux, through the `notify` crate, as Istio watches its
//! files with fsnotify), the directory's files' sizes and modification times say whether
//! anything that matters changed, and a registration wakes the watch too; a change starts a
//! debounce (a quiet period, bounded by a maximum delay, as Istio's PILOT_DEBOUNCE_AFTER and
//! PILOT_DEBOUNCE_MAX), then the mesh is compiled again. A mesh that fails its checks is
//! reported on the admin endpoint and the last good one stays served.
//!
//! The directory is also looked at every second, for the changes a file system does not
//! report (a network file system, an overflowed event queue). Where no watch can be set up
//! (no inotify instance or watch left), it is looked at every 5 ms for a small directory and
//! less often for a large one: each wait is at least fifty times what the last look took, so
//! that looking costs about 2 % of a CPU at most (up to a second between looks).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

use super::Pilot;

/// How often a small directory is looked at when the file system reports no changes.
const POLL: Duration = Duration::from_millis(5);

/// How often a directory is looked at at least, however large, and how often when the file
/// system reports changes.
const SLOWEST_POLL: Duration = Duration::from_secs(1);

/// The wait after a look that took `took`: [`POLL`], or fifty times `took`, whichever is
/// longer, up to [`SLOWEST_POLL`].
fn poll_after(took: Duration) -> Duration {
    (took * 50).clamp(POLL, SLOWEST_POLL)
}

/// The debounce of changes.
#[derive(Clone, Copy, Debug)]
pub struct Debounce {
    /// No change for this long: compile.
    pub quiet: Duration,
    /// Changes for this long without a quiet period: compile anyway.
    pub max: Duration,
}

/// What the directory holds: every file's path, size and modification time, sorted.
type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

fn fingerprint(dir: &Path) -> Fingerprint {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            // Editors' and tools' scratch files and directories are not the mesh.
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let Ok(metadata) = std::fs::metadata(&path) else { continue };
            if metadata.is_dir() {
                stack.push(path);
            } else {
                files.push((path, metadata.len(), metadata.modified().ok()));
            }
        }
    }
    files.sort();
    files
}

/// Has `wake` notified whenever the file system reports a change below `dir`; `None`, after
/// saying why, where no watch can be set up.
fn file_events(dir: &Path, wake: Arc<Notify>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let handler = move |event: notify::Result<notify::Event>| match event {
        // Reads (Pilot's own among them: looking at the directory opens it) change nothing.
        Ok(event) if event.kind.is_access() => {}
        // Anything else, a lost event included: the fingerprint tells what changed.
        _ => wake.notify_one(),
    };
    let watching = notify::recommended_watcher(handler).and_then(|mut watcher| {
        watcher.watch(dir, notify::RecursiveMode::Recursive)?;
        Ok(watcher)
    });
    match watching {
        Ok(watcher) => Some(watcher),
        Err(err) => {
            eprintln!("meshc pilot: cannot watch {} for changes ({err}); looking at it every few milliseconds instead", dir.display());
            None
        }
    }
}

/// Watches `dir` and the registration API for ever, feeding `pilot` each mesh that compiles.
/// `reparse` holds what the first compile parsed; each recompile parses again only the parts
/// of snapshots that changed.
pub async fn watch(pilot: Arc<Pilot>, dir: PathBuf, debounce: Debounce, mut reparse: crate::registry::Reparse) {
    let wake = Arc::new(Notify::new());
    // Kept for as long as the watch runs: dropping it ends the events.
    let events = file_events(&dir, wake.clone());
    let every = |took: Duration| if events.is_some() { SLOWEST_POLL } else { poll_after(took) };
    let looked = Instant::now();
    let mut seen = fingerprint(&dir);
    let mut poll = every(looked.elapsed());
    loop {
        let registered = tokio::select! {
            () = tokio::time::sleep(poll) => false,
            () = wake.notified() => false,
            () = pilot.registrations.changed.notified() => true,
        };
        let looked = Instant::now();
        let now = fingerprint(&dir);
        poll = every(looked.elapsed());
        if now == seen && !registered {
            continue;
        }
        seen = now;
        // A change: wait until the directory and the registrations are quiet, or the
        // maximum delay is up.
        let first = Instant::now();
        let mut last_change = first;
        while last_change.elapsed() < debounce.quiet && first.elapsed() < debounce.max {
            let left = (debounce.quiet.saturating_sub(last_change.elapsed())).min(debounce.max.saturating_sub(first.elapsed()));
            tokio::select! {
                () = tokio::time::sleep(poll.min(left)) => {}
                () = wake.notified() => {}
                () = pilot.registrations.changed.notified() => last_change = Instant::now(),
            }
            let now = fingerprint(&dir);
            if now != seen {
                seen = now;
                last_change = Instant::now();
            }
        }
        let overlay = super::registration::Overlay {
            disk: crate::source::DiskFs::new(&dir),
            registry: pilot.registrations.native_registry(&pilot.config().mesh),
        };
        let started = Instant::now();
        let compiled = tokio::task::spawn_blocking(move || {
            let compilation = crate::driver::compile_reusing(&overlay, &mut reparse);
            (compilation, reparse)
        })
        .await;
        // A compile that panicked leaves nothing to reuse; the next one parses everything.
        let Ok((compilation, kept)) = compiled else {
            reparse = crate::registry::Reparse::default();
            continue;
        };
        reparse = kept;
        let took = started.elapsed();
        match compilation.ir {
            Some(mesh) if !compilation.has_errors() => {
                if mesh != pilot.config().mesh {
                    pilot.accept(mesh);
                    eprintln!(
                        "meshc pilot: {} changed; serving generation {} (compiled in {} ms)",
                        dir.display(),
                        pilot.config().generation,
                        took.as_millis()
                    );
                } else {
                    pilot.accept_unchanged();
                }
            }
            _ => {
                let rendered = compilation.render_plain();
                eprintln!(
                    "meshc pilot: {} changed but does not compile; still serving generation {}:\n{rendered}",
                    dir.display(),
                    pilot.config().generation
                );
                pilot.reject(rendered);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_poll_slows_down_for_a_directory_that_takes_long_to_look_at() {
        assert_eq!(poll_after(Duration::from_micros(20)), POLL);
        assert_eq!(poll_after(Duration::from_millis(2)), Duration::from_millis(100));
        assert_eq!(poll_after(Duration::from_millis(200)), SLOWEST_POLL);
    }

    /// An empty directory under the workspace's target directory.
    fn scratch(name: &str) -> PathBuf {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/watch-tests").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("registry")).expect("create the directory");
        dir
    }

    #[tokio::test]
    async fn a_file_written_below_the_directory_wakes_the_watch_and_looking_at_it_does_not() {
        let dir = scratch("events");
        let wake = Arc::new(Notify::new());
        let _events = file_events(&dir, wake.clone()).expect("this machine's file system reports changes");
        // Pilot looking at the directory (it opens every directory in it) and reading a file
        // are no changes: were they taken for one, each look would wake the next.
        std::fs::write(dir.join("mesh.toml"), "[mesh]\n").expect("write");
        tokio::time::timeout(Duration::from_secs(10), wake.notified()).await.expect("a write wakes the watch");
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Whatever else writing the file reported has been taken.
        let _ = tokio::time::timeout(Duration::from_millis(1), wake.notified()).await;
        let _ = fingerprint(&dir);
        let _ = std::fs::read(dir.join("mesh.toml")).expect("read");
        assert!(tokio::time::timeout(Duration::from_millis(300), wake.notified()).await.is_err(), "looking woke the watch");
        // A file renamed into a subdirectory, as tools replace a registry snapshot.
        std::fs::write(dir.join("registry/.snapshot.new"), "[[service]]\n").expect("write");
        std::fs::rename(dir.join("registry/.snapshot.new"), dir.join("registry/snapshot.toml")).expect("rename");
        tokio::time::timeout(Duration::from_secs(10), wake.notified()).await.expect("a rename wakes the watch");
    }
}
