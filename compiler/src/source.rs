//! The load stage's data: every input file, by path relative to the mesh directory, with spans into it.
//!
//! Files reach the compiler through [`Vfs`], so the same pipeline runs on a directory on
//! disk and on an in-memory mesh (tests, benchmarks, fuzzing).

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Largest input file meshc reads; a larger one is an error, so memory stays bounded.
pub const MAX_FILE_BYTES: u64 = 512 << 20;

/// Index of a file in a [`SourceMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId(pub u32);

/// A byte range in one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span {
    /// The file.
    pub file: FileId,
    /// First byte.
    pub start: u32,
    /// One past the last byte.
    pub end: u32,
}

impl Span {
    /// A span over `range` of `file`.
    pub fn new(file: FileId, range: Range<usize>) -> Span {
        Span { file, start: clamp(range.start), end: clamp(range.end) }
    }

    /// The smallest span that covers both.
    pub fn to(self, other: Span) -> Span {
        debug_assert_eq!(self.file, other.file);
        Span { file: self.file, start: self.start.min(other.start), end: self.end.max(other.end) }
    }
}

fn clamp(offset: usize) -> u32 {
    u32::try_from(offset).unwrap_or(u32::MAX)
}

/// What an input file is, which decides how it is parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// `mesh.toml`.
    Manifest,
    /// A `*.mesh` spec file.
    Spec,
    /// A registry snapshot.
    Registry,
}

/// One input file.
#[derive(Clone, Debug)]
pub struct SourceFile {
    /// Path relative to the mesh directory, `/`-separated.
    pub path: String,
    /// What the file is.
    pub kind: FileKind,
    /// Its text.
    pub text: String,
    /// SHA-256 of its bytes, lower-case hex.
    pub sha256: String,
    line_starts: Vec<u32>,
}

/// Every file of a compilation.
#[derive(Clone, Debug, Default)]
pub struct SourceMap {
    files: Vec<SourceFile>,
    /// How rendered diagnostics name each file, when not by its path (see
    /// [`SourceMap::show_under`]).
    shown: Vec<String>,
}

impl SourceMap {
    /// Adds a file and returns its id.
    pub fn add(&mut self, path: String, kind: FileKind, text: String, sha256: String) -> FileId {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(at, _)| clamp(at + 1)));
        let id = FileId(u32::try_from(self.files.len()).expect("fewer than 2^32 input files"));
        self.files.push(SourceFile { path, kind, text, sha256, line_starts });
        id
    }

    /// Names every file in rendered diagnostics by its path from the current directory
    /// (`dir`, the mesh directory as the user gave it, joined with the file's path in it), so
    /// that a terminal or an editor can open it. Paths everywhere else (the IR, the JSON
    /// output, generated code, Pilot's `/status`) stay relative to the mesh directory; `.`
    /// changes nothing.
    pub fn show_under(&mut self, dir: &Path) {
        self.shown = if dir.as_os_str().is_empty() || dir == Path::new(".") {
            Vec::new()
        } else {
            self.files.iter().map(|it| dir.join(&it.path).display().to_string()).collect()
        };
    }

    /// The file with this id.
    pub fn file(&self, id: FileId) -> &SourceFile {
        &self.files[id.0 as usize]
    }

    /// Its path.
    pub fn path(&self, id: FileId) -> &str {
        &self.file(id).path
    }

    /// Its text.
    pub fn text(&self, id: FileId) -> &str {
        &self.file(id).text
    }

    /// The text a span covers.
    pub fn snippet(&self, span: Span) -> &str {
        self.text(span.file).get(span.start as usize..span.end as usize).unwrap_or("")
    }

    /// Every file, in the order added.
    pub fn files(&self) -> impl Iterator<Item = (FileId, &SourceFile)> {
        self.files.iter().enumerate().map(|(index, file)| (FileId(clamp(index)), file))
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, id: FileId, offset: u32) -> (usize, usize) {
        let file = self.file(id);
        let line = file.line_starts.partition_point(|&start| start <= offset).saturating_sub(1);
        let start = file.line_starts[line] as usize;
        let end = (offset as usize).min(file.text.len());
        let column = file.text.get(start..end).map_or(end - start, |it| it.chars().count());
        (line + 1, column + 1)
    }
}

impl<'a> codespan_reporting::files::Files<'a> for SourceMap {
    type FileId = FileId;
    type Name = &'a str;
    type Source = &'a str;

    fn name(&'a self, id: FileId) -> Result<&'a str, codespan_reporting::files::Error> {
        let index = id.0 as usize;
        let path = self.files.get(index).map(|it| it.path.as_str()).ok_or(codespan_reporting::files::Error::FileMissing)?;
        Ok(self.shown.get(index).map_or(path, String::as_str))
    }

    fn source(&'a self, id: FileId) -> Result<&'a str, codespan_reporting::files::Error> {
        self.files.get(id.0 as usize).map(|it| it.text.as_str()).ok_or(codespan_reporting::files::Error::FileMissing)
    }

    fn line_index(&'a self, id: FileId, byte_index: usize) -> Result<usize, codespan_reporting::files::Error> {
        let file = self.files.get(id.0 as usize).ok_or(codespan_reporting::files::Error::FileMissing)?;
        Ok(file.line_starts.partition_point(|&start| start as usize <= byte_index).saturating_sub(1))
    }

    fn line_range(&'a self, id: FileId, line_index: usize) -> Result<Range<usize>, codespan_reporting::files::Error> {
        let file = self.files.get(id.0 as usize).ok_or(codespan_reporting::files::Error::FileMissing)?;
        let start = *file
            .line_starts
            .get(line_index)
            .ok_or(codespan_reporting::files::Error::LineTooLarge { given: line_index, max: file.line_starts.len() - 1 })?;
        let end = file.line_starts.get(line_index + 1).map_or(file.text.len(), |&it| it as usize);
        Ok(start as usize..end)
    }
}

/// Where the compiler reads a mesh from.
pub trait Vfs {
    /// Reads a file, by path relative to the mesh directory.
    fn read(&self, path: &str) -> io::Result<Vec<u8>>;
    /// The `*.mesh` files at the top of the mesh directory, sorted.
    fn mesh_files(&self) -> io::Result<Vec<String>>;
    /// How to name the mesh directory in messages.
    fn describe(&self) -> String;
}

/// A mesh directory on disk.
#[derive(Clone, Debug)]
pub struct DiskFs {
    root: PathBuf,
}

impl DiskFs {
    /// The mesh directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> DiskFs {
        DiskFs { root: root.into() }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Vfs for DiskFs {
    fn read(&self, path: &str) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let full = self.root.join(path);
        let metadata = std::fs::metadata(&full)?;
        // A device or a pipe could be endless or block forever; only regular files are inputs.
        if !metadata.is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        // Room for the whole file at once: a registry snapshot can be megabytes, and growing
        // the buffer from nothing copied it a dozen times.
        let mut bytes = Vec::with_capacity(usize::try_from(metadata.len().min(MAX_FILE_BYTES) + 1).unwrap_or(0));
        std::fs::File::open(full)?.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(io::Error::other(format!("the file is larger than the limit of {MAX_FILE_BYTES} bytes")));
        }
        Ok(bytes)
    }

    fn mesh_files(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".mesh") && entry.file_type()?.is_file() {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}

/// A mesh held in memory: path → bytes.
#[derive(Clone, Debug, Default)]
pub struct MemFs {
    /// The files, by relative path.
    pub files: BTreeMap<String, Vec<u8>>,
}

impl MemFs {
    /// An empty mesh.
    pub fn new() -> MemFs {
        MemFs::default()
    }

    /// Reads every file below `dir` (paths relative to it, `/`-separated); links are followed.
    pub fn from_dir(dir: &Path) -> io::Result<MemFs> {
        let mut fs = MemFs::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(current) = stack.pop() {
            for entry in std::fs::read_dir(&current)? {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let relative = path.strip_prefix(dir).map_err(io::Error::other)?;
                    let relative = relative.components().map(|it| it.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
                    fs.insert(relative, std::fs::read(&path)?);
                }
            }
        }
        Ok(fs)
    }

    /// Adds or replaces a file.
    pub fn insert(&mut self, path: impl Into<String>, contents: impl Into<Vec<u8>>) -> &mut MemFs {
        self.files.insert(path.into(), contents.into());
        self
    }
}

impl Vfs for MemFs {
    fn read(&self, path: &str) -> io::Result<Vec<u8>> {
        let normal = normalize(path);
        self.files.get(&normal).cloned().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }

    fn mesh_files(&self) -> io::Result<Vec<String>> {
        Ok(self.files.keys().filter(|it| it.ends_with(".mesh") && !it.contains('/')).cloned().collect())
    }

    fn describe(&self) -> String {
        "<memory>".to_owned()
    }
}

/// `./a/../b.toml` → `b.toml`, as far as can be done without a file system.
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|it| *it != "..") => {
                parts.pop();
            }
            _ => parts.push(part),
        }
    }
    parts.join("/")
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for byte in digest.iter() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters_from_one() {
        let mut map = SourceMap::default();
        let id = map.add("a.mesh".into(), FileKind::Spec, "ab\nçd\n".into(), String::new());
        assert_eq!(map.line_col(id, 0), (1, 1));
        assert_eq!(map.line_col(id, 3), (2, 1));
        // `ç` is two bytes and one column.
        assert_eq!(map.line_col(id, 5), (2, 2));
        assert_eq!(map.line_col(id, 7), (3, 1));
    }

    #[test]
    fn normalize_resolves_dots() {
        assert_eq!(normalize("./registry/../k8s.yaml"), "k8s.yaml");
        assert_eq!(normalize("../shared/x.json"), "../shared/x.json");
        assert_eq!(normalize("a\\b.json"), "a/b.json");
    }
}
