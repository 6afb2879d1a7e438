//! Where a command runs: the project, the server it talks to, and who it acts as.
//!
//! - Project: the nearest folder at or above the current one holding `.conclave/` or
//!   `conclave.toml`.
//! - Server: `CONCLAVE_URL` (a comma-separated list names several servers, tried in order when
//!   one cannot be reached), else the `url` in `.conclave/server.json` that a running server
//!   wrote. HTTPS trusts `CONCLAVE_CA_CERT`, else `[server] tls_ca`, besides the built-in roots.
//! - Identity: the agent named by `CONCLAVE_AGENT` with `CONCLAVE_TOKEN`, else the admin with the
//!   token in `.conclave/admin.token`.
//!
//! Everything is resolved lazily, so that a command only fails for what it actually needs.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use conclave_core::project::Project;

use crate::error::Unreachable;
use conclave_client::Client;

pub use conclave_client::{ENV_AGENT, ENV_TOKEN, ENV_URL};

#[derive(Debug, Clone)]
pub struct Context {
    cwd: PathBuf,
    project: Option<Project>,
    url_override: Option<String>,
    agent: Option<(String, String)>,
}

impl Context {
    /// Reads the environment and finds the project; fails only on contradictory settings.
    pub fn from_env() -> anyhow::Result<Context> {
        let cwd = std::env::current_dir().context("cannot read the current folder")?;
        let project = Project::find(&cwd);
        let url_override = env_value(ENV_URL).map(|url| url.trim_end_matches('/').to_string());
        let agent = match (env_value(ENV_AGENT), env_value(ENV_TOKEN)) {
            (Some(name), Some(token)) => Some((name, token)),
            (Some(_), None) => {
                bail!("{ENV_AGENT} is set but {ENV_TOKEN} is not: set both to act as an agent")
            }
            (None, Some(_)) => {
                bail!("{ENV_TOKEN} is set but {ENV_AGENT} is not: set both to act as an agent")
            }
            (None, None) => None,
        };
        Ok(Context {
            cwd,
            project,
            url_override,
            agent,
        })
    }

    pub fn project(&self) -> anyhow::Result<&Project> {
        self.project.as_ref().with_context(|| {
            format!(
                "not inside a conclave project (no .conclave/ or conclave.toml in {} or above); \
                 run `conclave init` first",
                self.cwd.display()
            )
        })
    }

    /// The agent this command acts as; `what` names the command for the error.
    pub fn require_agent(&self, what: &str) -> anyhow::Result<&str> {
        match &self.agent {
            Some((name, _)) => Ok(name),
            None => bail!(
                "`{what}` acts as an agent: set {ENV_AGENT} and {ENV_TOKEN} \
                 (the token comes from `conclave agent add NAME`)"
            ),
        }
    }

    /// The server's base URL, re-read each time (a restarted server may have a new port).
    pub fn server_url(&self) -> anyhow::Result<String> {
        if let Some(url) = &self.url_override {
            return Ok(url.clone());
        }
        let project = self.project()?;
        match project.read_server_info() {
            Some(info) => Ok(info.url.trim_end_matches('/').to_string()),
            None => Err(Unreachable {
                what: format!(
                    "no conclave server is running for {}",
                    project.root().display()
                ),
            }
            .into()),
        }
    }

    fn token(&self) -> anyhow::Result<String> {
        if let Some((_, token)) = &self.agent {
            return Ok(token.clone());
        }
        let project = self.project()?;
        let path = project.admin_token_file();
        match project.read_admin_token() {
            Ok(Some(token)) => Ok(token),
            Ok(None) => bail!(
                "no admin token at {} (the server creates it when it first starts); \
                 to act as an agent set {ENV_AGENT} and {ENV_TOKEN}",
                path.display()
            ),
            Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// A client for the server, acting as this context's identity.
    pub fn client(&self) -> anyhow::Result<Client> {
        let url = self.server_url()?;
        let token = self.token()?;
        let agent = self.agent.as_ref().map(|(name, _)| name.clone());
        let ca = match &self.project {
            Some(project) => crate::commands::claude::ca_file(project),
            None => conclave_client::ca_from_env(),
        };
        Client::with_ca(url, token, agent, ca.as_deref())
    }
}

fn env_value(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
}
