//! `conclave agent add|list|token`.

use conclave_core::model::{Agent, AgentCreated, AgentList, NewAgent, TokenIssued};

use crate::cli::AgentCommand;
use crate::client::segment;
use crate::context::Context;
use crate::output::{Table, ago, or_dash, print_json};

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
    }
    Ok(())
}

pub fn agents_table(agents: &[Agent]) -> Table {
    let mut table = Table::new(&["name", "role", "status", "model", "caps", "last seen"]);
    for agent in agents {
        table.row(vec![
            agent.name.clone(),
            or_dash(agent.role.as_ref()),
            agent.status.to_string(),
            or_dash(agent.model.as_ref()),
            if agent.caps.is_empty() {
                "-".to_string()
            } else {
                agent.caps.join(",")
            },
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
    agents_table(agents).print();
}
