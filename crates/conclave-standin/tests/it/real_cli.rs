//! The real Claude Code CLI driven by the stand-in: a `-p` run that writes a file through the
//! `Write` tool, a two-turn `--input-format stream-json` session, and two agents on one
//! stand-in. Without the CLI these print `skipped: <reason>` and record the skip for
//! `scripts/test.sh` (`claude_or_skip`), except under `CI=true` where they fail.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use conclave_standin::claude_cli::{CliEnv, claude_or_skip, parse_stream_json};
use conclave_standin::{Reply, Script, StandIn};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Generous: a `-p` run takes about two seconds here, most of it start-up.
const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// What one finished CLI run printed.
struct CliRun {
    status: ExitStatus,
    lines: Vec<Value>,
    stderr: String,
}

impl CliRun {
    fn result_line(&self) -> Option<&Value> {
        self.lines
            .iter()
            .rev()
            .find(|line| line["type"] == "result")
    }
}

/// A temporary folder with `git init` done, as agents find their work trees.
fn git_repo() -> Result<TempDir> {
    let repo = tempfile::Builder::new()
        .prefix("conclave-repo-")
        .tempdir()?;
    let status = std::process::Command::new("git")
        .args(["init", "-q"])
        .current_dir(repo.path())
        .status()
        .context("running git init")?;
    ensure!(status.success(), "git init failed: {status}");
    Ok(repo)
}

/// Runs `claude <args>` in `cwd` with stdin closed and collects its stream-json output.
async fn run_cli(bin: &Path, cli_env: &CliEnv, cwd: &Path, args: &[&str]) -> Result<CliRun> {
    let child = cli_env
        .command(bin)
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting claude")?;
    let output = tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output())
        .await
        .context("claude did not finish in time")??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(CliRun {
        status: output.status,
        lines: parse_stream_json(&stdout).with_context(|| format!("stdout: {stdout}"))?,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// `-p` with stream-json output and edits accepted: the mode agents run in.
fn print_args(prompt: &str) -> Vec<&str> {
    vec![
        "-p",
        prompt,
        "--output-format",
        "stream-json",
        "--verbose",
        "--permission-mode",
        "acceptEdits",
    ]
}

fn path_string(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[tokio::test]
async fn print_mode_writes_a_file_through_the_write_tool() -> Result<()> {
    let Some(bin) = claude_or_skip() else {
        return Ok(());
    };
    let repo = git_repo()?;
    let file: PathBuf = repo.path().join("hello.txt");
    let content = "hello from the stand-in\n";
    let script = Script::new()
        .then(Reply::tool_use(
            "Write",
            json!({"file_path": path_string(&file), "content": content}),
        ))
        .then(Reply::text("I wrote hello.txt."));
    let stand_in = StandIn::start(script).await?;
    let cli_env = CliEnv::new(&stand_in.url(), "test-writer")?;

    let run = run_cli(&bin, &cli_env, repo.path(), &print_args("write the file")).await?;

    ensure!(
        run.status.success(),
        "claude failed: {}\n{}",
        run.status,
        run.stderr
    );
    assert_eq!(std::fs::read_to_string(&file)?, content);
    let result = run.result_line().context("no result line")?;
    assert_eq!(result["subtype"], "success");
    assert_eq!(result["result"], "I wrote hello.txt.");
    assert_eq!(result["num_turns"], 2);
    let init = run.lines.first().context("no output")?;
    assert_eq!(
        (&init["type"], &init["subtype"]),
        (&json!("system"), &json!("init"))
    );

    let turns = stand_in.main_requests();
    assert_eq!(turns.len(), 2, "{turns:#?}");
    assert!(stand_in.exhausted_requests().is_empty());
    assert_eq!(turns[0].user_prompt().as_deref(), Some("write the file"));
    assert_eq!(turns[0].api_key(), Some("test-writer"));
    assert!(turns[0].tool_names().contains(&"Write"));
    assert!(turns[0].tool_results().is_empty());
    let results = turns[1].tool_results();
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(!results[0].is_error, "{results:?}");
    assert!(results[0].tool_use_id.starts_with("toolu_standin_"));
    assert!(results[0].content.contains("hello.txt"), "{results:?}");
    // Nonessential traffic is off: nothing but the two turns reached the stand-in.
    assert_eq!(stand_in.requests().len(), 2);
    Ok(())
}

#[tokio::test]
async fn stream_json_input_runs_one_turn_per_line() -> Result<()> {
    let Some(bin) = claude_or_skip() else {
        return Ok(());
    };
    let repo = git_repo()?;
    let script = Script::replies([Reply::text("first answer"), Reply::text("second answer")]);
    let stand_in = StandIn::start(script).await?;
    let cli_env = CliEnv::new(&stand_in.url(), "test-streamer")?;
    let mut child = cli_env
        .command(&bin)
        .args(["-p", "--input-format", "stream-json"])
        .args(["--output-format", "stream-json", "--verbose"])
        .current_dir(repo.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting claude")?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let mut stdout = BufReader::new(child.stdout.take().context("no stdout")?).lines();

    let mut results = Vec::new();
    for question in ["first question", "second question"] {
        let line = json!({"type": "user", "message": {"role": "user", "content": question}});
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        let result = tokio::time::timeout(CLI_TIMEOUT, async {
            while let Some(line) = stdout.next_line().await? {
                let value: Value = serde_json::from_str(&line)?;
                if value["type"] == "result" {
                    return Ok(value);
                }
            }
            bail!("stdout closed before a result line")
        })
        .await
        .context("no result line in time")??;
        results.push(result);
    }
    drop(stdin);
    let status = tokio::time::timeout(CLI_TIMEOUT, child.wait()).await??;
    ensure!(status.success(), "claude failed: {status}");

    let texts: Vec<&Value> = results.iter().map(|result| &result["result"]).collect();
    assert_eq!(texts, vec!["first answer", "second answer"]);
    let turns = stand_in.main_requests();
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[1].user_prompt().as_deref(), Some("first question"));
    assert_eq!(
        turns[1].last_user_text().as_deref(),
        Some("second question")
    );
    // Both turns belong to one session.
    assert_eq!(turns[0].session_id(), turns[1].session_id());
    Ok(())
}

#[tokio::test]
async fn two_agents_share_one_stand_in_without_mixing_scripts() -> Result<()> {
    let Some(bin) = claude_or_skip() else {
        return Ok(());
    };
    let repo = git_repo()?;
    let script = Script::new()
        .agent("agent-a", [Reply::text("a says hi")])
        .agent("agent-b", [Reply::text("b says hi")]);
    let stand_in = StandIn::start(script).await?;
    let env_a = CliEnv::new(&stand_in.url(), "agent-a")?;
    let env_b = CliEnv::new(&stand_in.url(), "agent-b")?;
    let args = print_args("hello");
    let (run_a, run_b) = tokio::try_join!(
        run_cli(&bin, &env_a, repo.path(), &args),
        run_cli(&bin, &env_b, repo.path(), &args),
    )?;
    for (run, expected) in [(&run_a, "a says hi"), (&run_b, "b says hi")] {
        ensure!(
            run.status.success(),
            "claude failed: {}\n{}",
            run.status,
            run.stderr
        );
        let result = run.result_line().context("no result line")?;
        assert_eq!(result["result"], expected);
    }
    assert_eq!(stand_in.main_requests_for("agent-a").len(), 1);
    assert_eq!(stand_in.main_requests_for("agent-b").len(), 1);
    assert!(stand_in.exhausted_requests().is_empty());
    Ok(())
}
