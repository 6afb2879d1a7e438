//! Where a project's Conclave files live, and how commands find them.
//!
//! A project root is the folder holding `.conclave/` or `conclave.toml`, found by walking up from
//! the current folder like git does. Under `.conclave/`: the database, the admin token (mode
//! 0600), `server.json` (the running server's URL and pid), the server's lock file, and per-agent
//! folders for generated settings and stream records.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const STATE_DIR: &str = ".conclave";
pub const CONFIG_FILE: &str = "conclave.toml";

#[derive(Debug, Clone)]
pub struct Project {
    root: PathBuf,
}

/// What a running server writes so that other commands can find it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerInfo {
    pub url: String,
    pub pid: u32,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub version: String,
}

impl Project {
    pub fn at(root: impl Into<PathBuf>) -> Project {
        Project { root: root.into() }
    }

    /// The nearest folder at or above `start` that holds `.conclave/` or `conclave.toml`.
    pub fn find(start: &Path) -> Option<Project> {
        start
            .ancestors()
            .find(|dir| dir.join(STATE_DIR).is_dir() || dir.join(CONFIG_FILE).is_file())
            .map(Project::at)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR)
    }

    pub fn config_file(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }

    pub fn database(&self) -> PathBuf {
        self.state_dir().join("conclave.db")
    }

    pub fn admin_token_file(&self) -> PathBuf {
        self.state_dir().join("admin.token")
    }

    pub fn server_info_file(&self) -> PathBuf {
        self.state_dir().join("server.json")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.state_dir().join("server.lock")
    }

    pub fn agent_dir(&self, agent: &str) -> PathBuf {
        self.state_dir().join("agents").join(agent)
    }

    pub fn ensure_state_dir(&self) -> io::Result<PathBuf> {
        let dir = self.state_dir();
        fs::create_dir_all(&dir)?;
        // Tokens, the database and agents' logs live here: only the owner may enter (also for a
        // folder an older version created with the umask's mode).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        }
        let ignore = dir.join(".gitignore");
        if !ignore.exists() {
            // The state folder holds secrets and a live database: keep it out of commits.
            fs::write(&ignore, "*\n")?;
        }
        Ok(dir)
    }

    /// Reads the admin token, creating it (mode 0600) on first use.
    pub fn ensure_admin_token(&self) -> io::Result<String> {
        if let Some(token) = self.read_admin_token()? {
            return Ok(token);
        }
        self.ensure_state_dir()?;
        let token = format!("cva_{}", random_hex(24));
        write_private(&self.admin_token_file(), &format!("{token}\n"))?;
        Ok(token)
    }

    pub fn read_admin_token(&self) -> io::Result<Option<String>> {
        match fs::read_to_string(self.admin_token_file()) {
            Ok(text) => Ok(Some(text.trim().to_string()).filter(|t| !t.is_empty())),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    pub fn write_server_info(&self, info: &ServerInfo) -> io::Result<()> {
        let text = serde_json::to_string_pretty(info).map_err(io::Error::other)?;
        let tmp = self.state_dir().join("server.json.tmp");
        fs::write(&tmp, text)?;
        fs::rename(tmp, self.server_info_file())
    }

    pub fn read_server_info(&self) -> Option<ServerInfo> {
        let text = fs::read_to_string(self.server_info_file()).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn remove_server_info(&self) {
        let _ = fs::remove_file(self.server_info_file());
    }
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, contents: &str) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

fn random_hex(n_bytes: usize) -> String {
    use rand::RngCore;
    let mut bytes = vec![0u8; n_bytes];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_is_found_by_walking_up() {
        let temp = tempfile::tempdir().expect("tempdir");
        let deep = temp.path().join("a/b/c");
        fs::create_dir_all(&deep).expect("mkdir");
        assert!(
            Project::find(&deep).is_none()
                || Project::find(&deep).is_some_and(|p| p.root() != temp.path())
        );
        fs::write(temp.path().join(CONFIG_FILE), "").expect("config");
        assert_eq!(Project::find(&deep).expect("found").root(), temp.path());
    }

    #[test]
    fn the_admin_token_is_created_once_and_private() {
        let temp = tempfile::tempdir().expect("tempdir");
        let project = Project::at(temp.path());
        let first = project.ensure_admin_token().expect("token");
        assert_eq!(project.ensure_admin_token().expect("again"), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(project.admin_token_file())
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            let dir_mode = fs::metadata(project.state_dir())
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(dir_mode & 0o777, 0o700, "the state folder is private");
        }
    }
}
