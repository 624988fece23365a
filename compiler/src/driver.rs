//! The pipeline, stage by stage: load → parse → registries → merge → check → lower.

use meshc_codegen::ir;

use crate::diag::{Code, Diagnostic};
use crate::manifest::{MANIFEST, Manifest};
use crate::registry::{self, Reparse, Snapshot};
use crate::source::{FileId, FileKind, SourceMap, Vfs, sha256_hex};
use crate::{check, lower, manifest, syntax};

/// What a compilation produced.
#[derive(Debug)]
pub struct Compilation {
    /// Every file read, for rendering diagnostics.
    pub sources: SourceMap,
    /// Every finding, sorted by position.
    pub diagnostics: Vec<Diagnostic>,
    /// The IR, when there were no errors.
    pub ir: Option<ir::Mesh>,
    /// Whether a file could not be read (the CLI exits 2 rather than 1).
    pub io_error: bool,
}

impl Compilation {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// The diagnostics rendered without color.
    pub fn render_plain(&self) -> String {
        crate::diag::render_plain(&self.sources, &self.diagnostics)
    }
}

/// Compiles the mesh that `vfs` holds.
pub fn compile(vfs: &dyn Vfs) -> Compilation {
    compile_reusing(vfs, &mut Reparse::default())
}

/// Compiles the mesh directory `dir` as the command line gave it: its diagnostics name files
/// from the current directory (see [`SourceMap::show_under`]).
pub fn compile_dir(dir: &std::path::Path) -> Compilation {
    let mut compilation = compile(&crate::source::DiskFs::new(dir));
    compilation.sources.show_under(dir);
    compilation
}

/// [`compile`], parsing again only the parts of snapshots that changed since the compile that
/// last used `reparse` (Pilot's recompiles); the result is the same as [`compile`]'s.
pub fn compile_reusing(vfs: &dyn Vfs, reparse: &mut Reparse) -> Compilation {
    let mut loaded = load_reusing(vfs, reparse);
    let ir = analyze(&mut loaded);
    finish(loaded.sources, loaded.diagnostics, ir, loaded.io_error)
}

/// A mesh read and parsed: the work before merging, checking and lowering.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// Every file read.
    pub sources: SourceMap,
    /// The manifest, when it could be read and parsed.
    pub manifest: Option<Manifest>,
    /// The parsed spec files, in path order.
    pub files: Vec<syntax::ast::File>,
    /// Each registry's snapshot: its index in the manifest, its file, and what it holds.
    pub snapshots: Vec<(usize, FileId, Snapshot)>,
    /// Findings so far.
    pub diagnostics: Vec<Diagnostic>,
    /// Whether a file could not be read.
    pub io_error: bool,
    /// Whether every spec file parsed.
    pub syntax_ok: bool,
}

/// Reads the manifest, parses the spec files and reads every registry snapshot.
pub fn load(vfs: &dyn Vfs) -> Loaded {
    load_reusing(vfs, &mut Reparse::default())
}

/// [`load`], reusing what `reparse` kept from the last load of the same mesh, and keeping
/// what this one parsed for the next.
pub fn load_reusing(vfs: &dyn Vfs, reparse: &mut Reparse) -> Loaded {
    let mut loaded = Loaded {
        sources: SourceMap::default(),
        manifest: None,
        files: Vec::new(),
        snapshots: Vec::new(),
        diagnostics: Vec::new(),
        io_error: false,
        syntax_ok: true,
    };
    let Loaded { sources, files, snapshots, diagnostics, io_error, syntax_ok, .. } = &mut loaded;
    let Some((_, manifest)) = load_manifest(vfs, sources, diagnostics, io_error) else {
        return loaded;
    };

    // Spec files, sorted by path whatever order they were listed or found in.
    let mut spec_paths: Vec<(String, Option<crate::source::Span>)> = match &manifest.specs {
        Some(list) => list.iter().map(|(path, span)| (path.clone(), Some(*span))).collect(),
        None => match vfs.mesh_files() {
            Ok(paths) => paths.into_iter().map(|it| (it, None)).collect(),
            Err(err) => {
                *io_error = true;
                diagnostics.push(Diagnostic::error(Code::Io, format!("cannot list the spec files of {}: {err}", vfs.describe())));
                Vec::new()
            }
        },
    };
    spec_paths.sort();
    spec_paths.dedup_by(|a, b| a.0 == b.0);
    for (path, listed_at) in spec_paths {
        let Some(id) = read(vfs, &path, FileKind::Spec, listed_at, sources, diagnostics, io_error) else {
            *syntax_ok = false;
            continue;
        };
        match syntax::parse(id, sources.text(id), diagnostics) {
            Some(file) => files.push(file),
            None => *syntax_ok = false,
        }
    }

    // Registries, each through its adapter. Read in path order, so file ids (and so the
    // order of diagnostics) do not depend on the order the manifest lists registries in.
    let mut entries: Vec<(usize, &manifest::RegistryEntry)> = manifest.registries.iter().enumerate().collect();
    entries.sort_by(|a, b| a.1.path.cmp(&b.1.path).then_with(|| a.1.name.cmp(&b.1.name)));
    let mut kept = Reparse::default();
    for (index, entry) in entries {
        let Some(id) = read(vfs, &entry.path, FileKind::Registry, Some(entry.path_span), sources, diagnostics, io_error) else {
            continue;
        };
        let mut ctx = registry::Ctx {
            file: id,
            text: sources.text(id),
            registry: entry,
            namespace: entry.namespace.as_deref().unwrap_or(&manifest.namespace),
            mesh_namespace: &manifest.namespace,
            diagnostics: Vec::new(),
        };
        let snapshot = reparse.load(&mut ctx, &mut kept);
        diagnostics.append(&mut ctx.diagnostics);
        snapshots.push((index, id, snapshot));
    }
    *reparse = kept;
    loaded.manifest = Some(manifest);
    loaded
}

/// Merges the registries, checks the spec and lowers it: the IR, unless there were errors.
/// New findings are added to `loaded.diagnostics`.
pub fn analyze(loaded: &mut Loaded) -> Option<ir::Mesh> {
    let manifest = loaded.manifest.as_ref()?;
    let diagnostics = &mut loaded.diagnostics;
    let pairs: Vec<(&manifest::RegistryEntry, &Snapshot)> =
        loaded.snapshots.iter().map(|(index, _, snapshot)| (&manifest.registries[*index], snapshot)).collect();
    let catalog = registry::merge::merge(&pairs, diagnostics);
    // A file that did not parse would make every reference into it look unknown: stop here.
    if !loaded.syntax_ok || loaded.io_error {
        return None;
    }
    let errors_so_far = diagnostics.iter().any(Diagnostic::is_error);
    let checked = check::check(manifest, &loaded.sources, &loaded.files, &catalog, diagnostics)?;
    if errors_so_far {
        return None;
    }
    let registries: Vec<lower::LoadedRegistry<'_>> = loaded
        .snapshots
        .iter()
        .map(|(index, id, snapshot)| lower::LoadedRegistry {
            entry: &manifest.registries[*index],
            sha256: loaded.sources.file(*id).sha256.clone(),
            version: snapshot.version.clone(),
        })
        .collect();
    Some(lower::lower(manifest, &loaded.sources, &registries, &checked))
}

fn finish(sources: SourceMap, mut diagnostics: Vec<Diagnostic>, ir: Option<ir::Mesh>, io_error: bool) -> Compilation {
    crate::diag::sort(&mut diagnostics);
    Compilation { sources, diagnostics, ir, io_error }
}

fn load_manifest(
    vfs: &dyn Vfs,
    sources: &mut SourceMap,
    diagnostics: &mut Vec<Diagnostic>,
    io_error: &mut bool,
) -> Option<(FileId, Manifest)> {
    let bytes = match vfs.read(MANIFEST) {
        Ok(bytes) => bytes,
        Err(err) => {
            *io_error = true;
            let hint = if err.kind() == std::io::ErrorKind::NotFound { ": a mesh directory holds a `mesh.toml` manifest" } else { "" };
            diagnostics.push(Diagnostic::error(Code::Io, format!("cannot read {MANIFEST} in {}: {err}{hint}", vfs.describe())));
            return None;
        }
    };
    let sha256 = sha256_hex(&bytes);
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(_) => {
            diagnostics.push(Diagnostic::error(Code::Manifest, format!("{MANIFEST} is not UTF-8 text")));
            return None;
        }
    };
    let id = sources.add(MANIFEST.to_owned(), FileKind::Manifest, text, sha256);
    let manifest = manifest::parse(id, sources.text(id), diagnostics)?;
    Some((id, manifest))
}

/// Reads an input file into the source map; `at` is where the manifest names it.
fn read(
    vfs: &dyn Vfs,
    path: &str,
    kind: FileKind,
    at: Option<crate::source::Span>,
    sources: &mut SourceMap,
    diagnostics: &mut Vec<Diagnostic>,
    io_error: &mut bool,
) -> Option<FileId> {
    let label = |diagnostic: Diagnostic| match at {
        Some(span) => diagnostic.primary(span, "named here"),
        None => diagnostic,
    };
    let bytes = match vfs.read(path) {
        Ok(bytes) => bytes,
        Err(err) => {
            *io_error = true;
            diagnostics.push(label(Diagnostic::error(Code::Io, format!("cannot read `{path}`: {err}"))));
            return None;
        }
    };
    let sha256 = sha256_hex(&bytes);
    match String::from_utf8(bytes) {
        // Editors on Windows start UTF-8 files with a byte-order mark; it is not content.
        Ok(text) => Some(sources.add(path.to_owned(), kind, text.strip_prefix('\u{feff}').map_or(text.clone(), str::to_owned), sha256)),
        Err(err) => {
            let code = if kind == FileKind::Registry { Code::RegistryFormat } else { Code::Syntax };
            diagnostics.push(label(Diagnostic::error(
                code,
                format!("`{path}` is not UTF-8 text (invalid byte at offset {})", err.utf8_error().valid_up_to()),
            )));
            None
        }
    }
}
