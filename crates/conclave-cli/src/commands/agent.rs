//! `conclave agent add|list|token|stop|restart|pause|resume` (the last four ask the supervisor
//! through `POST /api/agents/NAME/control`).

use conclave_core::model::{
    Agent, AgentAction, AgentControl, AgentCreated, AgentList, NewAgent, Task, TokenIssued,
};

use crate::cli::AgentCommand;
use crate::context::Context;
use crate::output::{Table, ago, or_dash, print_json};
use conclave_client::segment;

pub async fn run(context: &Context, command: AgentCommand) -> anyhow::Result<()> {
    let client = context.client()?;
    match command {
        AgentCommand::Add {
            name,
            role,
            caps,
            model,
        } => {
            let request = NewAgent {
                name,
                role,
                model,
                caps,
            };
            let created: AgentCreated = client.post("/api/agents", &request).await?;
            println!("{}", created.token);
            eprintln!(
                "conclave: registered agent {}; act as it with CONCLAVE_AGENT={} CONCLAVE_TOKEN=<the token above>",
                created.agent.name, created.agent.name
            );
        }
        AgentCommand::List(flag) => {
            let list: AgentList = client.get("/api/agents", &[]).await?;
            if flag.json {
                print_json(&list)?;
            } else {
                print_agents(&list.agents);
            }
        }
        AgentCommand::Token { name } => {
            let path = format!("/api/agents/{}/tokens", segment(&name));
            let token: TokenIssued = client.post(&path, &serde_json::json!({})).await?;
            println!("{}", token.token);
            eprintln!("conclave: issued a new token for {name}");
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
    eprintln!("conclave: asked the supervisor to {action} {name}");
    // The request is an event that only a running `conclave up` acts on.
    if let Ok(project) = context.project() {
        let supervised = super::up::read_supervisor_info(project).is_some_and(|info| {
            i32::try_from(info.pid).is_ok_and(conclave_supervisor::process::is_alive)
        });
        if !supervised {
            eprintln!(
                "conclave: warning: no supervisor runs for this project (`conclave up`), so nothing acts on the request"
            );
        }
    }
    Ok(())
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
        "last seen",
    ]);
    for agent in agents {
        let task = tasks
            .iter()
            .filter(|task| !task.status.is_finished())
            .find(|task| task.assignee.as_deref() == Some(agent.name.as_str()))
            .map(|task| task.id.to_string());
        let context = match (agent.context_tokens, agent.context_window) {
            (Some(tokens), Some(window)) if window > 0 => {
                format!("{}k ({}%)", tokens / 1000, tokens * 100 / window)
            }
            (Some(tokens), _) => format!("{}k", tokens / 1000),
            _ => "-".to_string(),
        };
        table.row(vec![
            agent.name.clone(),
            or_dash(agent.role.as_ref()),
            agent.status.to_string(),
            or_dash(task),
            context,
            format!("${:.2}", agent.cost_usd),
            agent.restarts.to_string(),
            or_dash(agent.model.as_ref()),
            or_dash(agent.last_seen.map(ago)),
        ]);
    }
    table
}

fn print_agents(agents: &[Agent]) {
    if agents.is_empty() {
        eprintln!("no agents yet (add one with `conclave agent add NAME`)");
        return;
    }
    agents_table(agents, &[]).print();
}
