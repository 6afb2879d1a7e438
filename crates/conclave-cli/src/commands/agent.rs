//! `conclave agent add|list|token|tokens|revoke|stop|restart|pause|resume` (the last four ask
//! the supervisor through `POST /api/agents/NAME/control`).

use conclave_core::model::{
    Agent, AgentAction, AgentControl, AgentCreated, AgentList, AgentTokenList, NewAgent, Task,
    TokenIssued, TokensRevoked,
};

use crate::cli::AgentCommand;
use crate::context::Context;
use crate::output::{Table, ago, note, or_dash, outln, print_json};
use conclave_client::segment;
use conclave_core::store::RemovalReport;
use serde_json::json;

pub async fn run(context: &Context, command: AgentCommand) -> anyhow::Result<()> {
    let client = context.client()?;
    match command {
        AgentCommand::Add {
            name,
            role,
            caps,
            model,
            isolation,
            print_env,
        } => {
            let request = NewAgent {
                name,
                role,
                model,
                caps,
                isolation: isolation.unwrap_or_default(),
            };
            let created: AgentCreated = client.post("/api/agents", &request).await?;
            if print_env {
                let url = context.server_url()?;
                if !reachable_from_elsewhere(&url) {
                    note!(
                        "conclave: warning: {url} is not an address another host reaches; set \
                         CONCLAVE_URL to the one it should use (e.g. https://build-1:7420) and \
                         run this again, or edit the printed line"
                    );
                }
                outln!("{}", env_lines(&url, &created.agent.name, &created.token))?;
                note!(
                    "conclave: registered agent {}; on the other host, paste these lines into its \
                     shell (they hold its token: treat them as a password)",
                    created.agent.name
                );
                return Ok(());
            }
            outln!("{}", created.token)?;
            note!(
                "conclave: registered agent {}; act as it with CONCLAVE_AGENT={} CONCLAVE_TOKEN=<the token above>",
                created.agent.name,
                created.agent.name
            );
        }
        AgentCommand::List(flag) => {
            let list: AgentList = client.get("/api/agents", &[]).await?;
            if flag.json {
                print_json(&list)?;
            } else {
                print_agents(&list.agents)?;
            }
        }
        AgentCommand::Token { name } => {
            let path = format!("/api/agents/{}/tokens", segment(&name));
            let token: TokenIssued = client.post(&path, &serde_json::json!({})).await?;
            outln!("{}", token.token)?;
            note!("conclave: issued a new token for {name}");
        }
        AgentCommand::Tokens { name, json } => {
            let path = format!("/api/agents/{}/tokens", segment(&name));
            let list: AgentTokenList = client.get(&path, &[]).await?;
            if json.json {
                print_json(&list)?;
            } else if list.tokens.is_empty() {
                note!("{name} has no tokens (issue one with `conclave agent token {name}`)");
            } else {
                let mut table = Table::new(&["id", "created"]);
                for token in &list.tokens {
                    table.row(vec![token.id.clone(), ago(token.created_at)]);
                }
                table.print()?;
            }
        }
        AgentCommand::Revoke { name, token_id } => {
            let mut path = format!("/api/agents/{}/tokens", segment(&name));
            if let Some(id) = &token_id {
                path.push('/');
                path.push_str(&segment(id));
            }
            let revoked: TokensRevoked = client.delete(&path).await?;
            note!(
                "conclave: revoked {} token(s) of {name}; requests made with them are refused",
                revoked.revoked
            );
        }
        AgentCommand::Remove { name, reason } => {
            let path = format!("/api/agents/{}/remove", segment(&name));
            let removed: RemovalReport = client.post(&path, &json!({ "reason": reason })).await?;
            note!(
                "conclave: removed {name}: {} task(s) and {} lease(s) given back, {} token(s) \
                 revoked, {} merge queue entries dropped",
                removed.released.tasks.len(),
                removed.released.leases.len(),
                removed.tokens_revoked,
                removed.merges_dropped.len()
            );
        }
        AgentCommand::Stop { name } => control(context, &client, &name, AgentAction::Stop).await?,
        AgentCommand::Restart { name } => {
            control(context, &client, &name, AgentAction::Restart).await?
        }
        AgentCommand::Pause { name } => {
            control(context, &client, &name, AgentAction::Pause).await?
        }
        AgentCommand::Resume { name } => {
            control(context, &client, &name, AgentAction::Resume).await?
        }
    }
    Ok(())
}

async fn control(
    context: &Context,
    client: &conclave_client::Client,
    name: &str,
    action: AgentAction,
) -> anyhow::Result<()> {
    let path = format!("/api/agents/{}/control", segment(name));
    let _: Agent = client.post(&path, &AgentControl { action }).await?;
    note!("conclave: asked the supervisor to {action} {name}");
    // The request is an event that only a running `conclave up` acts on.
    if let Ok(project) = context.project() {
        let supervised = super::up::read_supervisor_info(project).is_some_and(|info| {
            i32::try_from(info.pid).is_ok_and(conclave_supervisor::process::is_alive)
        });
        if !supervised {
            note!(
                "conclave: warning: no supervisor runs for this project (`conclave up`), so nothing acts on the request"
            );
        }
    }
    Ok(())
}

/// `export` lines that make a shell act as the agent (`conclave agent add --print-env`), each
/// value quoted for `sh`.
pub fn env_lines(url: &str, name: &str, token: &str) -> String {
    [
        (crate::context::ENV_URL, url),
        (crate::context::ENV_AGENT, name),
        (crate::context::ENV_TOKEN, token),
    ]
    .iter()
    .map(|(key, value)| format!("export {key}={}", shell_quote(value)))
    .collect::<Vec<_>>()
    .join("\n")
}

/// `text` in single quotes for `sh` (a `'` inside becomes `'\''`).
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Whether every URL of `urls` names an address other hosts could use (not loopback, not the
/// unspecified `0.0.0.0`/`[::]`).
fn reachable_from_elsewhere(urls: &str) -> bool {
    urls.split(',').all(|url| {
        let host = url
            .split_once("://")
            .map_or(url, |(_, rest)| rest)
            .split(['/', '?'])
            .next()
            .unwrap_or_default();
        let host = match host.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
            _ => host,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match host.parse::<std::net::IpAddr>() {
            Ok(ip) => !(ip.is_loopback() || ip.is_unspecified()),
            Err(_) => host != "localhost",
        }
    })
}

/// The agents with what the supervisor reports (task held, context use, cost, restarts).
pub fn agents_table(agents: &[Agent], tasks: &[Task]) -> Table {
    let mut table = Table::new(&[
        "name",
        "role",
        "status",
        "task",
        "context",
        "cost",
        "restarts",
        "model",
        "host",
        "last seen",
    ]);
    for agent in agents {
        let task = tasks
            .iter()
            .filter(|task| !task.status.is_finished())
            .find(|task| task.assignee.as_deref() == Some(agent.name.as_str()))
            .map(|task| task.id.to_string());
        let context = context_figure(agent.context_tokens, agent.context_window)
            .unwrap_or_else(|| "-".to_string());
        table.row(vec![
            agent.name.clone(),
            or_dash(agent.role.as_ref()),
            agent.status.to_string(),
            or_dash(task),
            context,
            format!("${:.2}", agent.cost_usd),
            agent.restarts.to_string(),
            or_dash(agent.model.as_ref()),
            or_dash(agent.host.as_ref()),
            or_dash(agent.last_seen.map(ago)),
        ]);
    }
    table
}

fn print_agents(agents: &[Agent]) -> std::io::Result<()> {
    if agents.is_empty() {
        note!("no agents yet (add one with `conclave agent add NAME`)");
        return Ok(());
    }
    agents_table(agents, &[]).print()
}

/// An agent's context use as `8% (13k / 200k)`, or `13k` when the window is unknown; none when
/// nothing was reported. The dashboard's agent card prints the same figure, computed the same way
/// (`contextFigure` in the server's `assets/app.js`): shares and thousands rounded to the
/// nearest, the share capped at 100%.
pub fn context_figure(tokens: Option<i64>, window: Option<i64>) -> Option<String> {
    let tokens = tokens?;
    let thousands = |n: i64| (n as f64 / 1000.0).round();
    Some(match window.filter(|window| *window > 0) {
        Some(window) => {
            let share = (tokens as f64 / window as f64).min(1.0);
            format!(
                "{}% ({}k / {}k)",
                (share * 100.0).round(),
                thousands(tokens),
                thousands(window)
            )
        }
        None => format!("{}k", thousands(tokens)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_env_is_quoted_for_the_shell() {
        let lines = env_lines("https://build-1:7420", "coder-1", "tok'en");
        assert_eq!(
            lines,
            "export CONCLAVE_URL='https://build-1:7420'\nexport CONCLAVE_AGENT='coder-1'\n\
             export CONCLAVE_TOKEN='tok'\\''en'"
        );
        // What sh reads back is the value itself.
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{lines}\nprintf %s \"$CONCLAVE_TOKEN\""))
            .output()
            .expect("sh");
        assert_eq!(String::from_utf8_lossy(&output.stdout), "tok'en");
    }

    #[test]
    fn loopback_and_unspecified_addresses_do_not_reach_other_hosts() {
        for url in [
            "http://127.0.0.1:7420",
            "http://0.0.0.0:7420",
            "http://[::1]:1",
            "http://localhost:2",
        ] {
            assert!(!reachable_from_elsewhere(url), "{url}");
        }
        for url in [
            "http://10.200.0.1:7420",
            "https://build-1:7420/",
            "https://a:1,https://b:2",
        ] {
            assert!(reachable_from_elsewhere(url), "{url}");
        }
        assert!(!reachable_from_elsewhere(
            "http://10.0.0.1:1,http://127.0.0.1:2"
        ));
    }

    #[test]
    fn the_context_figure_rounds_like_the_dashboard() {
        let cases = [
            // The dashboard's browser test expects the same for this agent.
            (Some(84_000), Some(200_000), Some("42% (84k / 200k)")),
            (Some(12_600), Some(200_000), Some("6% (13k / 200k)")),
            (Some(15_000), Some(200_000), Some("8% (15k / 200k)")),
            (Some(0), Some(200_000), Some("0% (0k / 200k)")),
            (Some(250_000), Some(200_000), Some("100% (250k / 200k)")),
            (Some(12_400), None, Some("12k")),
            (Some(12_400), Some(0), Some("12k")),
            (None, Some(200_000), None),
        ];
        for (tokens, window, expected) in cases {
            assert_eq!(
                context_figure(tokens, window).as_deref(),
                expected,
                "{tokens:?} / {window:?}"
            );
        }
    }
}
