//! Dependency manifests and lockfiles: a change to one is flagged on the task and the dashboard,
//! since `cargo add` or `npm install` by one agent changes what everyone builds.

use std::path::Path;

/// Which kind of dependency file a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DependencyFile {
    /// Declares dependencies (`Cargo.toml`, `package.json`, `pyproject.toml`, `go.mod`).
    Manifest { ecosystem: &'static str },
    /// Pins resolved versions (`Cargo.lock`, `package-lock.json`, `pnpm-lock.yaml`, `uv.lock`,
    /// `go.sum`).
    Lockfile { ecosystem: &'static str },
}

impl DependencyFile {
    pub fn ecosystem(&self) -> &'static str {
        match self {
            DependencyFile::Manifest { ecosystem } | DependencyFile::Lockfile { ecosystem } => {
                ecosystem
            }
        }
    }
}

/// The file names matched exactly (in any folder).
const DEPENDENCY_FILES: &[(&str, DependencyFile)] = &[
    (
        "Cargo.toml",
        DependencyFile::Manifest { ecosystem: "cargo" },
    ),
    (
        "Cargo.lock",
        DependencyFile::Lockfile { ecosystem: "cargo" },
    ),
    (
        "package.json",
        DependencyFile::Manifest { ecosystem: "npm" },
    ),
    (
        "package-lock.json",
        DependencyFile::Lockfile { ecosystem: "npm" },
    ),
    (
        "pnpm-lock.yaml",
        DependencyFile::Lockfile { ecosystem: "pnpm" },
    ),
    (
        "pyproject.toml",
        DependencyFile::Manifest {
            ecosystem: "python",
        },
    ),
    ("uv.lock", DependencyFile::Lockfile { ecosystem: "uv" }),
    ("go.mod", DependencyFile::Manifest { ecosystem: "go" }),
    ("go.sum", DependencyFile::Lockfile { ecosystem: "go" }),
];

/// Whether `path` (project-relative or absolute) is a dependency manifest or lockfile.
pub fn dependency_file(path: &str) -> Option<DependencyFile> {
    let name = Path::new(path).file_name()?.to_str()?;
    DEPENDENCY_FILES
        .iter()
        .find(|(file_name, _)| *file_name == name)
        .map(|(_, kind)| *kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_and_lockfiles_are_flagged_in_any_folder_and_nothing_else() {
        let cases: &[(&str, Option<DependencyFile>)] = &[
            (
                "Cargo.lock",
                Some(DependencyFile::Lockfile { ecosystem: "cargo" }),
            ),
            (
                "crates/x/Cargo.toml",
                Some(DependencyFile::Manifest { ecosystem: "cargo" }),
            ),
            (
                "web/package-lock.json",
                Some(DependencyFile::Lockfile { ecosystem: "npm" }),
            ),
            (
                "web/package.json",
                Some(DependencyFile::Manifest { ecosystem: "npm" }),
            ),
            (
                "pnpm-lock.yaml",
                Some(DependencyFile::Lockfile { ecosystem: "pnpm" }),
            ),
            (
                "pyproject.toml",
                Some(DependencyFile::Manifest {
                    ecosystem: "python",
                }),
            ),
            (
                "uv.lock",
                Some(DependencyFile::Lockfile { ecosystem: "uv" }),
            ),
            (
                "svc/go.mod",
                Some(DependencyFile::Manifest { ecosystem: "go" }),
            ),
            (
                "svc/go.sum",
                Some(DependencyFile::Lockfile { ecosystem: "go" }),
            ),
            ("src/Cargo.lock.rs", None),
            ("cargo.toml", None),
            ("docs/package.json.md", None),
            ("", None),
        ];
        for (path, expected) in cases {
            assert_eq!(dependency_file(path), *expected, "{path}");
        }
    }
}
