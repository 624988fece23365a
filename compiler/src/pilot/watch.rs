//! Watching the mesh directory and the registration API: the file system reports changes
//! below the directory (inotify on Linux, through the `notify` crate, as Istio watches its
//! files with fsnotify), the directory's files' sizes and modification times say whether
//! anything that matters changed, and a registration wakes the watch too; a change starts a
//! debounce (a quiet period, bounded by a maximum delay, as Istio's PILOT_DEBOUNCE_AFTER and
//! PILOT_DEBOUNCE_MAX), then the mesh is compiled again. A compile under which the directory
//! changed is dropped and the directory compiled again, since what it read may have been half
//! written. A mesh that fails its checks is reported on the admin endpoint and the last good
//! one stays served.
//!
//! With file system events the directory is also looked at every second, for the changes a
//! file system does not report (a network file system, an overflowed event queue). Without
//! them it is looked at every 5 ms for a small directory and less often for a large one: so
//! where no watch can be set up (no inotify instance or watch left), while the directory holds
//! a link (events come from a link's target only as it was when the watch began, and not at
//! all from a target outside the directory: a Kubernetes ConfigMap's files are such links),
//! and where the directory's identity cannot be read (off Unix). A directory replaced or
//! re-linked as a whole (a new inode) gets a new watch at the next look.
//! Either way looks are kept apart: each is at least fifty times what the last one took after
//! it, so that looking costs about 2 % of a CPU at most however busy the directory is (up to
//! a second between looks). Changes to files and directories whose names start with a dot
//! (editors' scratch files, `.git`) are no changes.

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

/// One look at the directory.
pub struct Look {
    files: Fingerprint,
    /// Whether the walk met a link, whose target's changes the file system does not report
    /// (or reports only for the target it had when the watch began).
    linked: bool,
    /// The directory's own identity (device and inode of what its path leads to), which
    /// changes when it is replaced or its link re-pointed.
    root: Option<(u64, u64)>,
    /// When the look ended and how long it took.
    ended: Instant,
    took: Duration,
}

/// Looks at `dir`: what it holds now. Pilot looks before its first compile, so that the watch
/// sees a change made while it compiled.
pub fn look(dir: &Path) -> Look {
    let at = Instant::now();
    let mut files = Vec::new();
    let mut linked = std::fs::symlink_metadata(dir).is_ok_and(|it| it.file_type().is_symlink());
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if hidden_name(&entry.file_name()) {
                continue;
            }
            linked |= entry.file_type().is_ok_and(|it| it.is_symlink());
            let Ok(metadata) = std::fs::metadata(&path) else { continue };
            if metadata.is_dir() {
                stack.push(path);
            } else {
                files.push((path, metadata.len(), metadata.modified().ok()));
            }
        }
    }
    files.sort();
    Look { files, linked, root: identity(dir), ended: Instant::now(), took: at.elapsed() }
}

/// Editors' and tools' scratch files and directories are not the mesh.
fn hidden_name(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with('.')
}

#[cfg(unix)]
fn identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|it| (it.dev(), it.ino()))
}

#[cfg(not(unix))]
fn identity(_dir: &Path) -> Option<(u64, u64)> {
    None
}

/// Has `wake` notified whenever the file system reports a change below `dir`, other than a
/// read or a change to a hidden name; `None`, after saying why, where no watch can be set up.
fn file_events(dir: &Path, wake: Arc<Notify>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    // Some platforms (macOS's FSEvents) report canonical paths.
    let roots: Vec<PathBuf> = [Some(dir.to_path_buf()), dir.canonicalize().ok()].into_iter().flatten().collect();
    let hidden = move |path: &PathBuf| {
        roots.iter().any(|root| path.strip_prefix(root).is_ok_and(|rest| rest.components().any(|it| hidden_name(it.as_os_str()))))
    };
    let handler = move |event: notify::Result<notify::Event>| match event {
        // Reads (Pilot's own among them: looking at the directory opens it) change nothing.
        Ok(event) if event.kind.is_access() => {}
        Ok(event) if !event.paths.is_empty() && event.paths.iter().all(&hidden) => {}
        // Anything else, a lost event included: the next look tells what changed.
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

/// The directory as last seen, and the file system's events below it, set up again when the
/// directory is replaced.
struct Events {
    dir: PathBuf,
    seen: Look,
    watcher: Option<notify::RecommendedWatcher>,
    /// The identity of the directory `watcher` watches.
    root: Option<(u64, u64)>,
    wake: Arc<Notify>,
    /// How long to wait for a look when the file system reports changes.
    backstop: Duration,
}

impl Events {
    fn new(dir: PathBuf, seen: Look, backstop: Duration) -> Events {
        let wake = Arc::new(Notify::new());
        Events { watcher: file_events(&dir, wake.clone()), root: seen.root, dir, seen, wake, backstop }
    }

    /// Looks at the directory again: whether what it holds changed, and how long to wait for
    /// the next look when nothing wakes the watch (none after a new watch, set up for a
    /// replaced directory: what changed before it began is seen at once).
    fn look_again(&mut self) -> (bool, Duration) {
        let now = look(&self.dir);
        let changed = now.files != self.seen.files;
        self.seen = now;
        let poll = if self.seen.root != self.root {
            self.watcher = file_events(&self.dir, self.wake.clone());
            self.root = self.seen.root;
            Duration::ZERO
        } else if self.watcher.is_some() && !self.seen.linked && self.seen.root.is_some() {
            self.backstop
        } else {
            poll_after(self.seen.took)
        };
        (changed, poll)
    }

    /// Waits for a change reported, but no sooner than looking allows after the last look.
    async fn reported(&self) {
        self.wake.notified().await;
        tokio::time::sleep_until((self.seen.ended + poll_after(self.seen.took)).into()).await;
    }
}

/// The first compile of `dir`, before anything is served: compiled again, a quiet period
/// later, while files change under it (as [`watch`] does with every later compile), until the
/// debounce's maximum delay is up. Returns what the directory held before the compile that is
/// kept, what that compile parsed, and the compile.
pub fn compile_first(dir: &Path, debounce: Debounce) -> (Look, crate::registry::Reparse, crate::driver::Compilation) {
    compile_first_with(dir, debounce, &|| ())
}

fn compile_first_with(dir: &Path, debounce: Debounce, compiled: &dyn Fn()) -> (Look, crate::registry::Reparse, crate::driver::Compilation) {
    let started = Instant::now();
    let mut reparse = crate::registry::Reparse::default();
    loop {
        let before = look(dir);
        let compilation = crate::driver::compile_reusing(&crate::source::DiskFs::new(dir), &mut reparse);
        compiled();
        if look(dir).files == before.files || started.elapsed() >= debounce.max {
            return (before, reparse, compilation);
        }
        say_compiling_again(dir);
        std::thread::sleep(debounce.quiet);
    }
}

fn say_compiling_again(dir: &Path) {
    eprintln!("meshc pilot: {} changed while it was being compiled; compiling it again", dir.display());
}

/// Watches `dir` and the registration API for ever, feeding `pilot` each mesh that compiles.
/// `before` is what the directory held before the first compile, and `reparse` what that
/// compile parsed; each recompile parses again only the parts of snapshots that changed.
pub async fn watch(pilot: Arc<Pilot>, dir: PathBuf, debounce: Debounce, before: Look, reparse: crate::registry::Reparse) {
    watch_with(pilot, dir, debounce, before, reparse, SLOWEST_POLL, Arc::new(|| ())).await;
}

/// [`watch`], looking at the directory every `backstop` besides when the file system reports
/// changes, and calling `compiled` on the compiling thread after each compile has read the
/// directory (the tests write files there).
async fn watch_with(
    pilot: Arc<Pilot>,
    dir: PathBuf,
    debounce: Debounce,
    before: Look,
    mut reparse: crate::registry::Reparse,
    backstop: Duration,
    compiled: Arc<dyn Fn() + Send + Sync>,
) {
    // Kept for as long as the watch runs: dropping it ends the events.
    let mut events = Events::new(dir.clone(), before, backstop);
    // The first look at once: what changed since `before` (during the first compile, or
    // before the events began) is compiled now.
    let mut poll = Duration::ZERO;
    // When the change that is still to be compiled began, once one has been seen.
    let mut pending: Option<Instant> = None;
    loop {
        if pending.is_none() {
            let registered = tokio::select! {
                () = tokio::time::sleep(poll) => false,
                () = events.reported() => false,
                () = pilot.registrations.changed.notified() => true,
            };
            let changed;
            (changed, poll) = events.look_again();
            if !changed && !registered {
                continue;
            }
        }
        // A change: wait until the directory and the registrations are quiet, or the
        // maximum delay is up.
        let first = *pending.get_or_insert_with(Instant::now);
        let mut last_change = Instant::now();
        while last_change.elapsed() < debounce.quiet && first.elapsed() < debounce.max {
            let left = (debounce.quiet.saturating_sub(last_change.elapsed())).min(debounce.max.saturating_sub(first.elapsed()));
            tokio::select! {
                () = tokio::time::sleep(poll.min(left)) => {}
                () = events.reported() => {}
                () = pilot.registrations.changed.notified() => last_change = Instant::now(),
            }
            let changed;
            (changed, poll) = events.look_again();
            if changed {
                last_change = Instant::now();
            }
        }
        let overlay = super::registration::Overlay {
            disk: crate::source::DiskFs::new(&dir),
            registry: pilot.registrations.native_registry(&pilot.config().mesh),
        };
        let started = Instant::now();
        let after = compiled.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            let compilation = crate::driver::compile_reusing(&overlay, &mut reparse);
            after();
            (compilation, reparse)
        })
        .await;
        // A compile that panicked leaves nothing to reuse; the next one parses everything.
        let Ok((compilation, kept)) = compiled else {
            reparse = crate::registry::Reparse::default();
            pending = None;
            continue;
        };
        reparse = kept;
        let took = started.elapsed();
        // A file written while the compile read the directory may have been read half
        // written, and half a snapshot can be a valid one with instances missing: such a
        // compile is dropped and the directory compiled again once it is quiet, unless the
        // maximum delay is up, when it is served as it is and the newer files compiled next.
        let written;
        (written, poll) = events.look_again();
        if written && first.elapsed() < debounce.max {
            say_compiling_again(&dir);
            continue;
        }
        pending = written.then(Instant::now);
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
                } else if pilot.accept_unchanged() {
                    // The last word logged was that the mesh does not compile.
                    eprintln!(
                        "meshc pilot: {} compiles again, to the mesh being served; still serving generation {}",
                        dir.display(),
                        pilot.config().generation
                    );
                }
            }
            _ => {
                // `/status` names files within the mesh directory, which is all a remote
                // reader knows; the log names them from where Pilot runs.
                let mut compilation = compilation;
                let in_mesh = compilation.render_plain();
                compilation.sources.show_under(&dir);
                eprintln!(
                    "meshc pilot: {} changed but does not compile; still serving generation {}:\n{}",
                    dir.display(),
                    pilot.config().generation,
                    compilation.render_plain()
                );
                pilot.reject(in_mesh);
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

    /// An empty directory (with an empty `registry/`) under the workspace's target directory,
    /// and a sibling to prepare files in, outside what is watched.
    fn scratch(name: &str) -> (PathBuf, PathBuf) {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/watch-tests").join(name);
        let _ = std::fs::remove_dir_all(&base);
        let (dir, aside) = (base.join("mesh"), base.join("aside"));
        std::fs::create_dir_all(dir.join("registry")).expect("create the directory");
        std::fs::create_dir_all(&aside).expect("create the directory");
        (dir, aside)
    }

    /// Takes every wake-up until none has come for 300 ms (at most 10 s of them).
    async fn drain(wake: &Notify) {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until && tokio::time::timeout(Duration::from_millis(300), wake.notified()).await.is_ok() {}
    }

    #[tokio::test]
    async fn a_change_below_the_directory_wakes_the_watch_and_looks_and_hidden_files_do_not() {
        let (dir, aside) = scratch("events");
        let wake = Arc::new(Notify::new());
        let _events = file_events(&dir, wake.clone()).expect("this machine's file system reports changes");
        std::fs::write(dir.join("mesh.toml"), "[mesh]\n").expect("write");
        tokio::time::timeout(Duration::from_secs(10), wake.notified()).await.expect("a write wakes the watch");
        drain(&wake).await;
        // Pilot looking at the directory (it opens every directory in it) and reading a file
        // are no changes: were they taken for one, each look would wake the next. Nor is a
        // write to a hidden file.
        let _ = look(&dir);
        let _ = std::fs::read(dir.join("mesh.toml")).expect("read");
        std::fs::write(dir.join("registry/.snapshot.swp"), "x").expect("write");
        assert!(
            tokio::time::timeout(Duration::from_millis(300), wake.notified()).await.is_err(),
            "a look, a read or a hidden file woke the watch"
        );
        // A file renamed into a subdirectory from outside, as tools replace a snapshot.
        std::fs::write(aside.join("snapshot.toml"), "[[service]]\n").expect("write");
        std::fs::rename(aside.join("snapshot.toml"), dir.join("registry/snapshot.toml")).expect("rename");
        tokio::time::timeout(Duration::from_secs(10), wake.notified()).await.expect("a rename wakes the watch");
    }

    /// A copy of examples/bookinfo in a scratch directory, what it held before its first
    /// compile, and Pilot serving that compile.
    fn bookinfo(name: &str) -> (PathBuf, Look, crate::registry::Reparse, Arc<Pilot>) {
        let (dir, _) = scratch(name);
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bookinfo");
        for name in ["mesh.toml", "bookinfo.mesh", "registry/k8s.yaml"] {
            std::fs::copy(examples.join(name), dir.join(name)).unwrap_or_else(|err| panic!("copy {name}: {err}"));
        }
        let before = look(&dir);
        let mut reparse = crate::registry::Reparse::default();
        let mesh = crate::driver::compile_reusing(&crate::source::DiskFs::new(&dir), &mut reparse).ir.expect("bookinfo compiles");
        (dir, before, reparse, Pilot::new(mesh, Duration::from_secs(30)))
    }

    fn edit_timeout(dir: &Path) {
        let spec = std::fs::read_to_string(dir.join("bookinfo.mesh")).expect("read");
        // A length of its own, so that the change shows where a file system's clock is coarser
        // than the time since the last look.
        std::fs::write(dir.join("bookinfo.mesh"), spec.replace("timeout 1s", "timeout 10s")).expect("write");
    }

    /// Waits until `done`, failing with `otherwise` after 20 s.
    async fn wait_until(done: impl Fn() -> bool, otherwise: &str) {
        let until = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < until, "{otherwise}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_for_generation_2(pilot: &Pilot) {
        wait_until(|| pilot.config().generation != 1, "the change was not compiled").await;
    }

    /// No look but the first and those the file system's events start: the once-a-second
    /// look is an hour away.
    const NEVER: Duration = Duration::from_secs(3600);
    const AT_ONCE: Debounce = Debounce { quiet: Duration::ZERO, max: Duration::from_secs(10) };

    #[tokio::test]
    async fn a_change_is_compiled_on_the_file_systems_word_alone() {
        let (dir, before, reparse, pilot) = bookinfo("compile");
        let watching = tokio::spawn(watch_with(pilot.clone(), dir.clone(), AT_ONCE, before, reparse, NEVER, Arc::new(|| ())));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(pilot.config().generation, 1, "nothing changed yet");
        edit_timeout(&dir);
        wait_for_generation_2(&pilot).await;
        watching.abort();
    }

    #[tokio::test]
    async fn a_change_made_after_the_first_compile_and_before_the_watch_began_is_compiled() {
        let (dir, before, reparse, pilot) = bookinfo("early");
        edit_timeout(&dir);
        let watching = tokio::spawn(watch_with(pilot.clone(), dir.clone(), AT_ONCE, before, reparse, NEVER, Arc::new(|| ())));
        wait_for_generation_2(&pilot).await;
        watching.abort();
    }

    #[tokio::test]
    async fn a_mistake_undone_clears_the_error_and_keeps_the_generation() {
        let (dir, before, reparse, pilot) = bookinfo("undone");
        let spec = std::fs::read_to_string(dir.join("bookinfo.mesh")).expect("read");
        let watching = tokio::spawn(watch_with(pilot.clone(), dir.clone(), AT_ONCE, before, reparse, NEVER, Arc::new(|| ())));
        std::fs::write(dir.join("bookinfo.mesh"), spec.replace("timeout 1s", "timeout oops")).expect("write");
        wait_until(|| !pilot.lock_status().ok, "the status never became ok = false").await;
        assert!(pilot.lock_status().error.as_deref().is_some_and(|it| it.contains("oops")), "the error says what is wrong");
        std::fs::write(dir.join("bookinfo.mesh"), &spec).expect("write");
        wait_until(|| pilot.lock_status().ok, "the status never became ok = true").await;
        assert_eq!(pilot.lock_status().error, None);
        assert_eq!(pilot.config().generation, 1, "the mesh served is the one it was");
        watching.abort();
    }

    #[test]
    fn a_recompile_to_the_mesh_served_says_whether_it_ends_a_failure() {
        let (_, _, _, pilot) = bookinfo("unchanged");
        assert!(!pilot.accept_unchanged(), "nothing had failed");
        pilot.reject("error[E0101]: ...".to_owned());
        assert!(pilot.accept_unchanged(), "the failure ends here, and the log says so");
        assert!(!pilot.accept_unchanged(), "once");
    }

    #[tokio::test]
    async fn a_compile_that_files_were_written_under_is_dropped_and_the_directory_compiled_again() {
        let (dir, before, reparse, pilot) = bookinfo("written-under");
        // The first compile after the watch begins finds the first edit; a second edit lands
        // before the watch looks again, as a write would while the compile read the files.
        let second = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let compiled = {
            let (dir, second) = (dir.clone(), second.clone());
            Arc::new(move || {
                if !second.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    let spec = std::fs::read_to_string(dir.join("bookinfo.mesh")).expect("read");
                    std::fs::write(dir.join("bookinfo.mesh"), spec.replace("timeout 10s", "timeout 200s")).expect("write");
                }
            })
        };
        edit_timeout(&dir);
        let watching = tokio::spawn(watch_with(pilot.clone(), dir.clone(), AT_ONCE, before, reparse, NEVER, compiled));
        wait_for_generation_2(&pilot).await;
        let latest = crate::driver::compile(&crate::source::DiskFs::new(&dir)).ir.expect("the edited mesh compiles");
        // Generation 2 is the second edit: the first was compiled, and dropped unserved.
        assert!(second.load(std::sync::atomic::Ordering::SeqCst), "the second edit was made");
        assert_eq!(pilot.config().mesh, latest, "generation 2 is the directory as it is now");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(pilot.config().generation, 2, "nothing more to compile");
        watching.abort();
    }

    #[test]
    fn the_first_compile_is_done_again_when_files_were_written_under_it() {
        let (dir, _, _, _) = bookinfo("first-written-under");
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let compiled = || {
            if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                edit_timeout(&dir);
            }
        };
        let (before, _, compilation) = compile_first_with(&dir, AT_ONCE, &compiled);
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2, "compiled twice");
        let latest = crate::driver::compile(&crate::source::DiskFs::new(&dir)).ir.expect("the edited mesh compiles");
        assert_eq!(compilation.ir.expect("the kept compile has a mesh"), latest, "the kept compile read the edit");
        assert!(before.files == look(&dir).files, "`before` is the directory the kept compile read");
    }
}
