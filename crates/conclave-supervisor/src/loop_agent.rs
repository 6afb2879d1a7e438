//! `mode = "loop"` agents inside `conclave up`: each is a [`crate::loop_run`] loop run beside the
//! team's long-lived agents, with the agent's own settings (client, model, tools, env, prompt,
//! `budget_usd`), its `until` check and `max_iterations`. Each iteration claims one ready task
//! that fits the agent's role and capabilities, works on it and finishes it; the loop waits while
//! nothing fits but other work may still make a task ready, and ends when its check passes, its
//! iterations or budget run out (its own `budget_usd`, or the team's `team_budget_usd`, which
//! its iterations count against), no task is left for it, or, with `confirm = true`, a person
//! stops it before an iteration.

use std::collections::BTreeMap;

use conclave_client::Client;
use conclave_core::config::Config;
use conclave_core::model::Confirmation;
use conclave_core::project::Project;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::loop_run::{
    ConfirmEach, LoopEnd, LoopExtras, LoopOptions, LoopSpend, iteration_line, run_loop_with,
};
use crate::machine::LoopEnded;
use crate::plan::AgentPlan;

/// The prompt of each iteration of a loop inside `up`.
pub const ITERATION_PROMPT: &str = "Call the conclave `claim` tool to take one ready task that \
fits you, do it, and finish it with `done` (a short summary) or `fail` (the reason). Work on that \
one task only, then end.";

/// A `mode = "loop"` agent of `conclave.toml`.
#[derive(Debug, Clone)]
pub struct LoopAgent {
    pub plan: AgentPlan,
    pub until: Option<String>,
    pub max_iterations: Option<u32>,
    /// `confirm = true`: a person decides before each iteration after the first, from the
    /// dashboard or the API (`up` has no terminal to ask in).
    pub confirm: bool,
}

/// Splits the team's plans into the long-lived agents and the loops (by the `[[agent]]` each
/// plan came from: `count` names them NAME-1, NAME-2...).
pub fn split_loops(config: &Config, plans: Vec<AgentPlan>) -> (Vec<AgentPlan>, Vec<LoopAgent>) {
    let mut specs = BTreeMap::new();
    for spec in config.agents.iter().filter(|spec| spec.is_loop()) {
        match spec.count {
            Some(count) => {
                for n in 1..=count {
                    specs.insert(format!("{}-{n}", spec.name), spec);
                }
            }
            None => {
                specs.insert(spec.name.clone(), spec);
            }
        }
    }
    let mut team = Vec::new();
    let mut loops = Vec::new();
    for plan in plans {
        match specs.get(&plan.name) {
            Some(spec) => loops.push(LoopAgent {
                until: spec.until.clone(),
                max_iterations: spec.max_iterations,
                confirm: spec.confirm.unwrap_or(false),
                plan,
            }),
            None => team.push(plan),
        }
    }
    (team, loops)
}

/// What a loop inside `up` shares with the team: how it is stopped, and where its spend goes.
#[derive(Clone)]
pub struct LoopTies {
    /// The run ends: the loop ends (a running iteration is interrupted and recorded).
    pub stop: CancellationToken,
    /// The team's budget is spent: the loop ends, saying so.
    pub team_budget_spent: CancellationToken,
    /// After each iteration: what the loop has spent in all, for the team's budget.
    pub spent: UnboundedSender<LoopSpend>,
}

/// Starts `agent`'s loop in `set`, its sessions reaching the server at `url`; it ends by itself
/// or when the run ends or the team's budget is spent ([`LoopTies`]). Each iteration and the end
/// are printed in `up`'s terminal.
pub fn spawn_loop(
    set: &mut JoinSet<LoopEnded>,
    project: Project,
    admin: Client,
    url: String,
    agent: LoopAgent,
    ties: LoopTies,
) {
    let stop = ties.stop.child_token();
    // The team's budget ends the loop like the end of the run; the watcher goes with the loop.
    tokio::spawn({
        let (stop, spent) = (stop.clone(), ties.team_budget_spent.clone());
        async move {
            tokio::select! {
                () = spent.cancelled() => stop.cancel(),
                () = stop.cancelled() => {}
            }
        }
    });
    set.spawn(async move {
        let name = agent.plan.name.clone();
        let settings = agent.plan.settings.clone();
        let options = LoopOptions {
            prompt: ITERATION_PROMPT.to_string(),
            until: agent.until.clone(),
            max: agent.max_iterations,
            budget_usd: settings.budget_usd,
            model: settings.model.clone(),
            agent: name.clone(),
            permission_mode: settings.permission_mode.clone(),
            env: settings.env.clone().unwrap_or_default(),
            // The check's time limit is the loop's default.
            ..LoopOptions::default()
        };
        let extras = LoopExtras {
            role: agent.plan.role.clone(),
            caps: agent.plan.caps.clone(),
            settings: Some(settings),
            one_task_each: true,
            on_waiting: Some(Box::new({
                let name = name.clone();
                move |why: &str| eprintln!("conclave: {name} waits: {why}")
            })),
            confirm: agent.confirm.then(|| confirm_from_the_dashboard(&name)),
            on_spent: Some(ties.spent.clone()),
            ..LoopExtras::default()
        };
        eprintln!("conclave: {name} runs as a loop (one task per iteration)");
        let printed = name.clone();
        let report = run_loop_with(&project, &admin, &url, &options, extras, stop, move |it| {
            eprintln!("conclave: {printed}: {}", iteration_line(it));
        })
        .await;
        let ended = match report {
            Ok(report) => {
                let could_not_run = match &report.end {
                    LoopEnd::CouldNotRun(why) => Some(why.clone()),
                    _ => None,
                };
                let why = if report.end == LoopEnd::Interrupted
                    && ties.team_budget_spent.is_cancelled()
                {
                    "the team's budget is spent".to_string()
                } else {
                    report.end.describe()
                };
                LoopEnded {
                    summary: format!(
                        "{name}: loop, {why}: {} iteration(s), ${:.2}",
                        report.iterations.len(),
                        report.cost_usd()
                    ),
                    name: name.clone(),
                    could_not_run,
                }
            }
            Err(error) => LoopEnded {
                summary: format!("{name}: loop, could not run: {error:#}"),
                could_not_run: Some(format!("{error:#}")),
                name: name.clone(),
            },
        };
        eprintln!("conclave: {}", ended.summary);
        ended
    });
}

/// The checkpoints of a loop with `confirm = true`: no terminal answers (the channel is closed at
/// once), so the decision comes from the dashboard or the API; `up`'s terminal says who waits.
fn confirm_from_the_dashboard(name: &str) -> ConfirmEach {
    let (_no_terminal, terminal) = tokio::sync::mpsc::unbounded_channel();
    let name = name.to_string();
    ConfirmEach {
        terminal,
        on_wait: Box::new(move |waiting: &Confirmation| {
            eprintln!(
                "conclave: {name} waits for you before iteration {}: continue or stop it on the \
                 dashboard (or POST /api/agents/{name}/confirm)",
                waiting.next_iteration
            );
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_are_told_apart_from_team_agents_by_their_section() {
        let config = Config::parse(
            "[[agent]]\nname = \"coder\"\ncount = 2\n\n[[agent]]\nname = \"fixer\"\ncount = 2\n\
             mode = \"loop\"\nuntil = \"true\"\nmax_iterations = 4\n",
        )
        .expect("config");
        let root = std::path::Path::new("/tmp");
        let plans = crate::plan::plan_team(&config, root).expect("plans");
        let (team, loops) = split_loops(&config, plans);
        let names: Vec<&str> = team.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["coder-1", "coder-2"]);
        let loop_names: Vec<&str> = loops.iter().map(|l| l.plan.name.as_str()).collect();
        assert_eq!(loop_names, ["fixer-1", "fixer-2"]);
        assert_eq!(loops[0].until.as_deref(), Some("true"));
        assert_eq!(loops[0].max_iterations, Some(4));
        assert!(!loops[0].confirm, "no person asked unless confirm = true");
    }
}
