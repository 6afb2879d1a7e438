//! Getting the real Claude Code CLI for tests, and the environment to run it in isolation.
//!
//! [`find_claude`] looks, in order, at:
//! 1. `CONCLAVE_CLAUDE_BIN`: a path to a `claude` executable, used as is;
//! 2. the pinned version [`PINNED_CLAUDE_CODE_VERSION`] in the cache folder
//!    `$CONCLAVE_CACHE_DIR/claude-code-<version>` (or `~/.cache/conclave/claude-code-<version>`
//!    when `CONCLAVE_CACHE_DIR` is unset), installed there with
//!    `npm install --prefix <dir> @anthropic-ai/claude-code@<version>` if missing. A file lock
//!    in that folder keeps parallel test processes from installing twice; a marker file
//!    records that the binary answered `--version` with the pinned version.
//!
//! [`claude_or_skip`] wraps it with the tests' policy: under `CI=true` a missing CLI fails
//! the test, elsewhere the test prints `skipped: <reason>`, records the skip (see
//! [`record_skip`]) and returns.
//!
//! [`CliEnv`] is the environment a test runs the CLI in: a fresh temporary `HOME`, the
//! stand-in's URL and an API key, nonessential traffic off, and nothing inherited but a short
//! list of harmless variables (so no `ANTHROPIC_*`, `CLAUDE_*` or proxy settings leak in).

use std::collections::BTreeMap;
use std::env;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{Value, json};
use tempfile::TempDir;

/// The Claude Code version tests run against.
pub const PINNED_CLAUDE_CODE_VERSION: &str = "2.1.328";

/// Names a `claude` executable to use instead of the pinned install.
pub const CLAUDE_BIN_ENV: &str = "CONCLAVE_CLAUDE_BIN";

/// The folder under which pinned versions are installed (default `~/.cache/conclave`).
pub const CACHE_DIR_ENV: &str = "CONCLAVE_CACHE_DIR";

/// Names a file to which every skipped test appends one line; `scripts/test.sh` sets it and
/// counts the lines, since cargo hides what a passing test prints and counts it as passed.
pub const SKIP_LOG_ENV: &str = "CONCLAVE_SKIP_LOG";

/// The npm package of the CLI.
pub const NPM_PACKAGE: &str = "@anthropic-ai/claude-code";

/// Written next to `node_modules` once the binary has answered `--version` correctly.
const VERIFIED_MARKER: &str = ".conclave-verified";

/// Locked while a process checks or installs the CLI.
const LOCK_FILE: &str = ".conclave-install.lock";

/// Variables passed through from the test's own environment; everything else is dropped.
const PASS_THROUGH_VARS: &[&str] = &[
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "TZ",
    "TERM",
    "USER",
    "LOGNAME",
    "SHELL",
    "TMPDIR",
    "NODE_EXTRA_CA_CERTS",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "RUST_LOG",
    "RUST_BACKTRACE",
    "LLVM_PROFILE_FILE",
];

/// Why the CLI cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum ClaudeCliError {
    /// `CONCLAVE_CLAUDE_BIN` names something that is not a file.
    #[error("{CLAUDE_BIN_ENV} is set to {path}, which is not a file")]
    BinNotFound {
        /// The path it named.
        path: PathBuf,
    },
    /// Neither `CONCLAVE_CACHE_DIR` nor `HOME` is set.
    #[error("no cache folder for the Claude Code CLI: set {CACHE_DIR_ENV} or HOME")]
    NoCacheDir,
    /// `npm` could not be started.
    #[error(
        "cannot run npm to install {NPM_PACKAGE} ({source}); install Node.js and npm, or set {CLAUDE_BIN_ENV}"
    )]
    NpmMissing {
        /// Why it could not be started.
        source: io::Error,
    },
    /// `npm install` ran and failed.
    #[error("`npm install {NPM_PACKAGE}@{version}` into {} failed ({status}): {stderr}", dir.display())]
    InstallFailed {
        /// The version asked for.
        version: String,
        /// The install folder.
        dir: PathBuf,
        /// npm's exit status.
        status: String,
        /// The end of npm's error output.
        stderr: String,
    },
    /// The binary does not report the expected version.
    #[error("{} --version printed {output:?}, not version {expected}; delete the folder to reinstall", path.display())]
    WrongVersion {
        /// The binary.
        path: PathBuf,
        /// The version expected.
        expected: String,
        /// What it printed (or why it could not run).
        output: String,
    },
    /// A file operation in the install folder failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
}

/// The real `claude` executable: `CONCLAVE_CLAUDE_BIN` if set, else the pinned version from
/// the cache folder, installed with npm first if it is missing. Blocks while installing (a
/// minute or so); call it from `spawn_blocking` in async code that must stay responsive.
pub fn find_claude() -> Result<PathBuf, ClaudeCliError> {
    if let Some(bin) = non_empty_var(CLAUDE_BIN_ENV) {
        let path = PathBuf::from(bin);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(ClaudeCliError::BinNotFound { path })
        };
    }
    let dir = install_dir(PINNED_CLAUDE_CODE_VERSION)?;
    ensure_installed(&dir, PINNED_CLAUDE_CODE_VERSION)
}

/// The folder a version is installed in: `$CONCLAVE_CACHE_DIR/claude-code-<version>`, or
/// `$HOME/.cache/conclave/claude-code-<version>`.
pub fn install_dir(version: &str) -> Result<PathBuf, ClaudeCliError> {
    let base = match non_empty_var(CACHE_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => non_empty_var("HOME")
            .map(|home| PathBuf::from(home).join(".cache").join("conclave"))
            .ok_or(ClaudeCliError::NoCacheDir)?,
    };
    Ok(base.join(format!("claude-code-{version}")))
}

/// Where npm puts the binary inside an install folder.
pub fn binary_in(dir: &Path) -> PathBuf {
    dir.join("node_modules")
        .join("@anthropic-ai")
        .join("claude-code")
        .join("bin")
        .join("claude.exe")
}

/// Makes sure `version` is installed in `dir` and returns its binary. Installs with npm only
/// if the binary is missing or does not answer `--version` with `version`; holds a file lock
/// in `dir` meanwhile, so concurrent callers wait for one install.
pub fn ensure_installed(dir: &Path, version: &str) -> Result<PathBuf, ClaudeCliError> {
    let bin = binary_in(dir);
    let marker = dir.join(VERIFIED_MARKER);
    if marker.is_file() && bin.is_file() {
        return Ok(bin);
    }
    fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;
    let lock_path = dir.join(LOCK_FILE);
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| io_error(&lock_path, source))?;
    lock.lock().map_err(|source| io_error(&lock_path, source))?;
    // Another process may have finished while we waited for the lock.
    if marker.is_file() && bin.is_file() {
        return Ok(bin);
    }
    if !bin.is_file() || check_version(&bin, version).is_err() {
        tracing::info!(version, dir = %dir.display(), "installing the Claude Code CLI with npm");
        npm_install(dir, version)?;
    }
    check_version(&bin, version)?;
    fs::write(&marker, version).map_err(|source| io_error(&marker, source))?;
    // The lock is released when `lock` is dropped.
    Ok(bin)
}

/// [`find_claude`] with the tests' policy: `Some(path)` if the CLI can be had; otherwise,
/// under `CI=true`, a panic (a test that cannot run must fail in CI), and elsewhere a
/// `skipped: <reason>` line on stdout and `None`. The lookup runs once per process.
///
/// # Panics
///
/// Under `CI=true` when the CLI cannot be had.
pub fn claude_or_skip() -> Option<PathBuf> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = FOUND.get_or_init(|| find_claude().map_err(|error| error.to_string()));
    match found {
        Ok(path) => Some(path.clone()),
        Err(reason) if env::var("CI").is_ok_and(|ci| ci == "true") => {
            panic!("the real Claude Code CLI is required under CI=true: {reason}")
        }
        Err(reason) => {
            record_skip(reason);
            None
        }
    }
}

/// Reports the running test as skipped for `reason`: a `skipped: <reason>` line on stdout and,
/// when [`SKIP_LOG_ENV`] names a file, a line `<test name>: <reason>` appended to it (one short
/// write with `O_APPEND`, so test binaries running in parallel do not mix their lines).
///
/// # Panics
///
/// When the skip cannot be recorded: a skip that goes uncounted would pass for a success.
pub fn record_skip(reason: &str) {
    println!("skipped: {reason}");
    let Some(path) = env::var_os(SKIP_LOG_ENV) else {
        return;
    };
    // libtest names each test's thread after the test.
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("(unnamed test)");
    if let Err(error) = append_skip(Path::new(&path), test, reason) {
        panic!(
            "cannot record the skip in {} ({SKIP_LOG_ENV}): {error}",
            Path::new(&path).display()
        );
    }
}

/// Appends `<test>: <reason>` to `path` as one line (the reason's line breaks become spaces).
fn append_skip(path: &Path, test: &str, reason: &str) -> io::Result<()> {
    let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
    let line = format!("{test}: {reason}\n");
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    io::Write::write_all(&mut file, line.as_bytes())
}

/// Parses the CLI's `--output-format stream-json` output: one JSON object a line (blank lines
/// are skipped).
pub fn parse_stream_json(stdout: &str) -> Result<Vec<Value>, serde_json::Error> {
    stdout
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(serde_json::from_str)
        .collect()
}

/// The environment for running the CLI in a test, isolated from the machine's user and
/// network: a fresh temporary `HOME` (deleted on drop) and only the variables listed by
/// [`CliEnv::vars`] plus a few harmless ones passed through (`PATH`, locale, `TERM`, `SHELL`,
/// `TMPDIR`, CA certificates, `RUST_LOG`, `RUST_BACKTRACE`).
///
/// The variables set are: `HOME` and `XDG_{CONFIG,CACHE,DATA,STATE}_HOME` under it;
/// `ANTHROPIC_BASE_URL`; `ANTHROPIC_API_KEY`; `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1`
/// (no `GET /api/hello`, title requests, update checks, or DNS lookups);
/// `DISABLE_TELEMETRY=1`; `DISABLE_AUTOUPDATER=1`; `DISABLE_ERROR_REPORTING=1`; and
/// `CLAUDE_CODE_MAX_RETRIES=1` (an API error fails a turn in about a second instead of
/// retrying ten times with backoff for minutes). Override any of them with [`CliEnv::set`].
///
/// The home also holds a `.claude.json` that marks onboarding done and approves the API key,
/// so an interactive session (e.g. under tmux) skips those screens; with
/// [`CliEnv::trust_folder`] it also skips the folder-trust question and starts straight at the
/// prompt. Headless `-p` runs need none of this.
#[derive(Debug)]
pub struct CliEnv {
    home: TempDir,
    vars: BTreeMap<String, String>,
}

impl CliEnv {
    /// A new environment with its own temporary `HOME`, pointing the CLI at `base_url` (the
    /// stand-in's or a real gateway's) with `api_key`.
    pub fn new(base_url: &str, api_key: &str) -> io::Result<Self> {
        let home = tempfile::Builder::new()
            .prefix("conclave-claude-home-")
            .tempdir()?;
        let mut vars = BTreeMap::new();
        let home_dir = home.path().to_path_buf();
        let xdg = [
            ("XDG_CONFIG_HOME", ".config"),
            ("XDG_CACHE_HOME", ".cache"),
            ("XDG_DATA_HOME", ".local/share"),
            ("XDG_STATE_HOME", ".local/state"),
        ];
        for (name, relative) in xdg {
            let dir = home_dir.join(relative);
            fs::create_dir_all(&dir)?;
            vars.insert(name.to_owned(), dir.to_string_lossy().into_owned());
        }
        vars.insert("HOME".to_owned(), home_dir.to_string_lossy().into_owned());
        let fixed = [
            ("ANTHROPIC_BASE_URL", base_url),
            ("ANTHROPIC_API_KEY", api_key),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
            ("DISABLE_TELEMETRY", "1"),
            ("DISABLE_AUTOUPDATER", "1"),
            ("DISABLE_ERROR_REPORTING", "1"),
            ("CLAUDE_CODE_MAX_RETRIES", "1"),
        ];
        for (name, value) in fixed {
            vars.insert(name.to_owned(), value.to_owned());
        }
        write_user_config(&home_dir, api_key)?;
        Ok(Self { home, vars })
    }

    /// The temporary home folder (the CLI keeps `.claude.json` and `.claude/` there:
    /// transcripts under `.claude/projects/<cwd with / as ->/<session id>.jsonl`).
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Sets (or overrides) one variable.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.vars.insert(name.into(), value.into());
        self
    }

    /// Sets one variable, builder style.
    #[must_use]
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set(name, value);
        self
    }

    /// Marks `dir` as trusted in the home's `.claude.json`, so an interactive session started
    /// there skips the "do you trust this folder?" question (headless `-p` runs never ask).
    /// Pass the path as the CLI will see its working directory (canonical, no symlinks).
    pub fn trust_folder(&self, dir: &Path) -> io::Result<()> {
        let config_path = self.home().join(".claude.json");
        let mut config: Value = serde_json::from_str(&fs::read_to_string(&config_path)?)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        let Some(config_object) = config.as_object_mut() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                ".claude.json is not an object",
            ));
        };
        let projects = config_object.entry("projects").or_insert_with(|| json!({}));
        if let Some(projects) = projects.as_object_mut() {
            let project = projects
                .entry(dir.to_string_lossy().into_owned())
                .or_insert_with(|| json!({}));
            if let Some(project) = project.as_object_mut() {
                project.insert("hasTrustDialogAccepted".to_owned(), Value::Bool(true));
            }
        }
        fs::write(config_path, config.to_string())
    }

    /// Removes a variable this environment would set.
    pub fn unset(&mut self, name: &str) -> &mut Self {
        self.vars.remove(name);
        self
    }

    /// The variables this environment sets (not those passed through).
    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }

    /// The complete environment of the child: the pass-through variables found in this
    /// process's environment, then [`CliEnv::vars`].
    pub fn full_env(&self) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = PASS_THROUGH_VARS
            .iter()
            .filter(|name| !self.vars.contains_key(**name))
            .filter_map(|name| env::var_os(name).map(|value| (OsString::from(name), value)))
            .collect();
        env.extend(
            self.vars
                .iter()
                .map(|(name, value)| (OsString::from(name), OsString::from(value))),
        );
        env
    }

    /// Clears `command`'s environment and puts this one in its place.
    pub fn apply(&self, command: &mut Command) {
        command.env_clear().envs(self.full_env());
    }

    /// A `tokio` command for `bin` in this environment, killed if dropped, with stdin closed
    /// (set it to `Stdio::piped()` for `--input-format stream-json`).
    pub fn command(&self, bin: &Path) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(bin);
        command
            .env_clear()
            .envs(self.full_env())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        command
    }
}

/// Seeds `~/.claude.json` so an interactive session skips onboarding and the "use this API
/// key?" question (the CLI remembers approved keys by their last 20 characters).
fn write_user_config(home: &Path, api_key: &str) -> io::Result<()> {
    let key_chars: Vec<char> = api_key.chars().collect();
    let key_suffix: String = key_chars[key_chars.len().saturating_sub(20)..]
        .iter()
        .collect();
    let config = json!({
        "hasCompletedOnboarding": true,
        "customApiKeyResponses": {"approved": [key_suffix], "rejected": []},
    });
    fs::write(home.join(".claude.json"), config.to_string())
}

fn npm_install(dir: &Path, version: &str) -> Result<(), ClaudeCliError> {
    let output = Command::new("npm")
        .arg("install")
        .arg("--prefix")
        .arg(dir)
        .args(["--no-audit", "--no-fund", "--loglevel=error"])
        .arg(format!("{NPM_PACKAGE}@{version}"))
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| ClaudeCliError::NpmMissing { source })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
    Err(ClaudeCliError::InstallFailed {
        version: version.to_owned(),
        dir: dir.to_path_buf(),
        status: output.status.to_string(),
        stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
    })
}

/// Runs `bin --version` in a throwaway home and checks it starts with `version`.
fn check_version(bin: &Path, version: &str) -> Result<(), ClaudeCliError> {
    let wrong = |output: String| ClaudeCliError::WrongVersion {
        path: bin.to_path_buf(),
        expected: version.to_owned(),
        output,
    };
    let home = tempfile::tempdir().map_err(|source| io_error(&env::temp_dir(), source))?;
    let mut command = Command::new(bin);
    command
        .arg("--version")
        .env_clear()
        .env("HOME", home.path())
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .stdin(std::process::Stdio::null());
    if let Some(path) = env::var_os("PATH") {
        command.env("PATH", path);
    }
    let output = command.output().map_err(|error| wrong(error.to_string()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if output.status.success() && stdout.split_whitespace().next() == Some(version) {
        Ok(())
    } else {
        Err(wrong(stdout))
    }
}

fn non_empty_var(name: &str) -> Option<OsString> {
    env::var_os(name).filter(|value| !value.is_empty())
}

fn io_error(path: &Path, source: io::Error) -> ClaudeCliError {
    ClaudeCliError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_skip_is_one_line_of_the_skip_log() {
        let dir = TempDir::new().expect("temp dir");
        let log = dir.path().join("skips");
        append_skip(&log, "e2e::one", "no npm:\n  not found").expect("first");
        append_skip(&log, "e2e::two", "no npm").expect("second");
        let text = fs::read_to_string(&log).expect("log");
        assert_eq!(text, "e2e::one: no npm: not found\ne2e::two: no npm\n");
    }

    #[test]
    fn binary_path_follows_the_npm_layout() {
        assert_eq!(
            binary_in(Path::new("/c/claude-code-1.0.0")),
            PathBuf::from(
                "/c/claude-code-1.0.0/node_modules/@anthropic-ai/claude-code/bin/claude.exe"
            )
        );
    }

    #[test]
    fn cli_env_isolates_home_and_points_at_the_stand_in() -> io::Result<()> {
        let cli_env = CliEnv::new("http://127.0.0.1:9", "key-123").map(|e| e.with("EXTRA", "1"))?;
        let env: BTreeMap<String, String> = cli_env
            .full_env()
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .collect();
        assert_eq!(
            env.get("HOME").map(PathBuf::from).as_deref(),
            Some(cli_env.home())
        );
        assert_eq!(
            env.get("ANTHROPIC_BASE_URL").map(String::as_str),
            Some("http://127.0.0.1:9")
        );
        assert_eq!(
            env.get("ANTHROPIC_API_KEY").map(String::as_str),
            Some("key-123")
        );
        assert_eq!(env.get("EXTRA").map(String::as_str), Some("1"));
        let leaked: Vec<&String> = env
            .keys()
            .filter(|name| {
                (name.starts_with("ANTHROPIC_") || name.starts_with("CLAUDE"))
                    && !cli_env.vars().contains_key(*name)
            })
            .collect();
        assert!(leaked.is_empty(), "inherited {leaked:?}");
        cli_env.trust_folder(Path::new("/work/repo"))?;
        let config: Value =
            serde_json::from_str(&fs::read_to_string(cli_env.home().join(".claude.json"))?)?;
        assert_eq!(
            config["customApiKeyResponses"]["approved"],
            json!(["key-123"])
        );
        assert_eq!(
            config["projects"]["/work/repo"]["hasTrustDialogAccepted"],
            json!(true)
        );
        Ok(())
    }
}
