//! Watching the mesh directory and the registration API: the directory's files' sizes and
//! modification times are polled, and a registration wakes the watch; a change starts a
//! debounce (a quiet period, bounded by a maximum delay, as Istio's PILOT_DEBOUNCE_AFTER and
//! PILOT_DEBOUNCE_MAX), then the mesh is compiled again. A mesh that fails its checks is
//! reported on the admin endpoint and the last good one stays served.
//!
//! The poll runs every 5 ms for a small directory and less often for a large one: each
//! wait is at least fifty times what the last look took, so that looking costs about 2 % of
//! a CPU at most (up to a second between looks; a directory that takes longer than 20 ms to
//! look at is polled every second). (A file watch would need inotify, which the workspace's
//! dependencies and its ban on `unsafe` do not offer.)

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::Pilot;

/// How often a small directory is looked at.
const POLL: Duration = Duration::from_millis(5);

/// How often a directory is looked at at least, however large.
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

/// Watches `dir` and the registration API for ever, feeding `pilot` each mesh that compiles.
/// `reparse` holds what the first compile parsed; each recompile parses again only the parts
/// of snapshots that changed.
pub async fn watch(pilot: Arc<Pilot>, dir: PathBuf, debounce: Debounce, mut reparse: crate::registry::Reparse) {
    let looked = Instant::now();
    let mut seen = fingerprint(&dir);
    let mut poll = poll_after(looked.elapsed());
    loop {
        tokio::select! {
            () = tokio::time::sleep(poll) => {
                let looked = Instant::now();
                let now = fingerprint(&dir);
                poll = poll_after(looked.elapsed());
                if now == seen {
                    continue;
                }
                seen = now;
            }
            () = pilot.registrations.changed.notified() => {}
        }
        // A change: wait until the directory and the registrations are quiet, or the
        // maximum delay is up.
        let first = Instant::now();
        let mut last_change = first;
        while last_change.elapsed() < debounce.quiet && first.elapsed() < debounce.max {
            tokio::select! {
                () = tokio::time::sleep(poll.min(debounce.quiet)) => {
                    let now = fingerprint(&dir);
                    if now != seen {
                        seen = now;
                        last_change = Instant::now();
                    }
                }
                () = pilot.registrations.changed.notified() => last_change = Instant::now(),
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
}
