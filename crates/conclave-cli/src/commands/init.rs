//! `conclave init`: make the current folder a Conclave project.

use crate::output::note;
use anyhow::Context as _;
use conclave_core::config::EXAMPLE_CONFIG;
use conclave_core::project::{CONFIG_FILE, Project, STATE_DIR};

pub fn run() -> anyhow::Result<()> {
    let cwd = std::env::current_dir().context("cannot read the current folder")?;
    let project = Project::at(&cwd);
    let state_existed = project.state_dir().is_dir();
    project
        .ensure_state_dir()
        .with_context(|| format!("cannot create {}", project.state_dir().display()))?;
    let config = project.config_file();
    let config_existed = config.exists();
    if !config_existed {
        std::fs::write(&config, EXAMPLE_CONFIG)
            .with_context(|| format!("cannot write {}", config.display()))?;
    }
    match (state_existed, config_existed) {
        (true, true) => note!(
            "conclave: {} is already a conclave project (kept {STATE_DIR}/ and {CONFIG_FILE})",
            cwd.display()
        ),
        (false, true) => {
            note!("conclave: created {STATE_DIR}/ (kept the existing {CONFIG_FILE})")
        }
        (true, false) => {
            note!("conclave: created {CONFIG_FILE} (commented; every setting is optional)")
        }
        (false, false) => note!(
            "conclave: created {STATE_DIR}/ and {CONFIG_FILE} (commented; every setting is optional)"
        ),
    }
    if !(state_existed && config_existed) {
        note!("next: `conclave serve` to start the server, `conclave up` to run the team");
    }
    Ok(())
}
